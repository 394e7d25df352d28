// What each client costs the server once it has synced a big document:
// seeds a room with one text of --size characters, connects --clients
// clients one after another (each waits for its whole sync, so what a send
// needs only while it runs is given back before the next), then reports
// the growth of the server's RSS per client, 1.5 s after the last sync.
//
//   node memory-after-sync.mjs --url ws://127.0.0.1:PORT --pid PID \
//     [--protocol y-websocket|hocuspocus] [--clients 500] [--size 1000000]
//
// y-websocket clients are raw sockets (room in the path); Hocuspocus ones
// are @hocuspocus/provider 3.x providers on `/` (crdt-hub serves both).
// Linux only: the RSS is read from /proc/PID/status.

import fs from 'node:fs'
import { parseArgs } from 'node:util'

import { HocuspocusProvider } from '@hocuspocus/provider'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import WebSocket from 'ws'
import * as syncProtocol from 'y-protocols/sync'
import * as Y from 'yjs'

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    pid: { type: 'string' },
    protocol: { type: 'string', default: 'y-websocket' },
    clients: { type: 'string', default: '500' },
    size: { type: 'string', default: '1000000' },
    room: { type: 'string', default: 'memory-after-sync' }
  }
})
if (!args.url || !args.pid) throw new Error('--url and --pid are required')
const clients = Number(args.clients)
const size = Number(args.size)

const rssMiB = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${args.pid}/status`, 'utf8'))[1]) / 1024
const frame = write => { const e = encoding.createEncoder(); write(e); return encoding.toUint8Array(e) }
const delay = ms => new Promise(resolve => setTimeout(resolve, ms))
const open = url => new Promise((resolve, reject) => {
  const ws = new WebSocket(url)
  ws.binaryType = 'arraybuffer'
  ws.once('open', () => resolve(ws))
  ws.once('error', reject)
})

/** One raw y-websocket client, resolved once its SyncStep2 holds the text. */
async function yWebsocketClient () {
  const ws = await open(`${args.url}/${args.room}`)
  const doc = new Y.Doc()
  ws.on('message', data => {
    const decoder = decoding.createDecoder(new Uint8Array(data))
    if (decoding.readVarUint(decoder) === 0) syncProtocol.readSyncMessage(decoder, encoding.createEncoder(), doc, null)
  })
  ws.send(frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, doc) }))
  while (doc.getText('t').length < size) await delay(5)
  return ws
}

/** One Hocuspocus provider, resolved once its document holds the text. */
async function hocuspocusClient () {
  const doc = new Y.Doc()
  const provider = new HocuspocusProvider({ url: args.url, name: args.room, document: doc, WebSocketPolyfill: WebSocket, token: null })
  while (doc.getText('t').length < size) await delay(5)
  return provider
}

const seeder = await open(`${args.url}/${args.room}`)
const seed = new Y.Doc()
seed.getText('t').insert(0, 'x'.repeat(size))
seeder.send(frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeUpdate(e, Y.encodeStateAsUpdate(seed)) }))
const connect = args.protocol === 'hocuspocus' ? hocuspocusClient : yWebsocketClient
const held = [await connect()] // the room is loaded and has sent the document once
const before = rssMiB()
for (let i = 0; i < clients; i++) held.push(await connect())
await delay(1500)
const after = rssMiB()
console.log(JSON.stringify({
  protocol: args.protocol,
  clients,
  size,
  rss_before_mib: Number(before.toFixed(1)),
  rss_after_mib: Number(after.toFixed(1)),
  kib_per_client: Number(((after - before) * 1024 / clients).toFixed(1))
}))
process.exit(0)
