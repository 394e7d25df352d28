#!/usr/bin/env node
// A second fan-out generator, in Node with the npm `yjs` and `ws` packages,
// to cross-check `crdt-hub-loadgen`'s fan-out numbers with a different
// client stack (issue #24 item 1: two harnesses disagreed on crdt-hub's CPU
// per delivery).
//
// C clients over R rooms (client i in room i % R) speak the y-websocket wire
// protocol with raw frames. Each sends K updates a second for D seconds, on
// one of three schedules, and counts what the others sent. What the updates
// are is the question this tool exists to ask (--edits):
//   append  each client appends a stamp to its own run of text in a Y.Doc it
//           never shares: the server chains every item on the sender's
//           previous one, as crdt-hub-loadgen's precomputed updates do;
//   shared  each client applies what it receives and types the stamp at a
//           random place in the room's one Y.Text, as people editing one
//           paragraph do: items land between other clients' items, splitting
//           them, and concurrent ones race for the same place. Applying
//           every delivery costs this one Node process about 0.75 of a core
//           at 18k deliveries/s; at 45k it falls behind (sends late, p50 in
//           the tens of ms), so compare servers with it at 18k.
// Every update carries `@@ts<14 digits>c<6 digits>;` (as crdt-hub-loadgen's
// do), so receivers find the sender and the send time without decoding.
//
// Usage: node fanout.mjs --url ws://127.0.0.1:PORT --pid SERVER_PID
//          [--clients 200] [--rooms 20] [--rate 25] [--duration 20]
//          [--arrivals even|poisson|interval] [--edits append|shared]
//          [--label NAME] [--room-prefix P]
// Prints one JSON line: deliveries, latency percentiles, and the server's CPU
// per delivery over the send window and over the whole run (connecting and
// syncing included).

import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    pid: { type: 'string' },
    clients: { type: 'string', default: '200' },
    rooms: { type: 'string', default: '20' },
    rate: { type: 'string', default: '25' },
    duration: { type: 'string', default: '20' },
    arrivals: { type: 'string', default: 'even' },
    edits: { type: 'string', default: 'append' },
    label: { type: 'string', default: '' },
    'room-prefix': { type: 'string', default: `node-fanout-${process.pid}-${Date.now()}` }
  }
})

function positive (name) {
  const n = Number(opt[name])
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, not ${opt[name]}`)
  return n
}

if (!opt.url) throw new Error('--url ws://HOST:PORT is required')
const clients = positive('clients')
const rooms = positive('rooms')
const rate = positive('rate')
const durationMs = positive('duration') * 1000
const serverPid = opt.pid ? Number(opt.pid) : null
if (clients % rooms !== 0) throw new Error(`--clients ${clients} must be a multiple of --rooms ${rooms} (every room the same size)`)
if (!['even', 'poisson', 'interval'].includes(opt.arrivals)) throw new Error(`--arrivals even|poisson|interval, not ${opt.arrivals}`)
if (!['append', 'shared'].includes(opt.edits)) throw new Error(`--edits append|shared, not ${opt.edits}`)
const period = 1000 / rate

const MESSAGE_SYNC = 0
const STEP1 = 0
const STEP2 = 1
const UPDATE = 2
const MARKER = Buffer.from('@@ts')
const MICROS_DIGITS = 14
const FIELD_LEN = 4 + MICROS_DIGITS + 1 + 6 + 1

const t0 = process.hrtime.bigint()
const nowMicros = () => Number((process.hrtime.bigint() - t0) / 1000n)
const stamp = (sender) =>
  `@@ts${String(nowMicros()).padStart(MICROS_DIGITS, '0')}c${String(sender).padStart(6, '0')};`

/** utime + stime of `pid` in seconds (Linux /proc; 0 without a pid). */
function cpuSeconds (pid) {
  if (pid === null) return 0
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

function syncFrame (step, payload) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MESSAGE_SYNC)
  encoding.writeVarUint(e, step)
  encoding.writeVarUint8Array(e, payload)
  return encoding.toUint8Array(e)
}

const latencies = []
let delivered = 0
let echoes = 0
let sent = 0
let lastDelivery = 0
let sending = false
/** Close codes of connections the server ended before the run did. */
const closedByServer = []
let finished = false

class Client {
  constructor (index) {
    this.index = index
    this.room = index % rooms
    this.doc = new Y.Doc()
    this.text = this.doc.getText('bench')
    this.appendAt = 0
    this.synced = false
    this.doc.on('update', (update, origin) => {
      if (origin === this && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(syncFrame(UPDATE, update))
        sent++
      }
    })
  }

  connect () {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(`${opt.url}/${opt['room-prefix']}-${this.room}`, { perMessageDeflate: false })
      this.ws.binaryType = 'nodebuffer'
      this.ws.on('open', () => this.ws.send(syncFrame(STEP1, Y.encodeStateVector(this.doc))))
      this.ws.on('message', (data) => {
        if (this.onMessage(data) && !this.synced) {
          this.synced = true
          resolve()
        }
      })
      this.ws.on('error', reject)
      this.ws.on('close', (code) => {
        if (!this.synced) reject(new Error(`closed ${code} before sync`))
        else if (!finished) closedByServer.push(code)
      })
    })
  }

  /** Handles one frame; true when it was the server's sync step 2. */
  onMessage (data) {
    const d = decoding.createDecoder(data)
    if (decoding.readVarUint(d) !== MESSAGE_SYNC) return false
    const step = decoding.readVarUint(d)
    const payload = decoding.readVarUint8Array(d)
    if (step === STEP1) {
      this.ws.send(syncFrame(STEP2, Y.encodeStateAsUpdate(this.doc, payload)))
      return false
    }
    if (sending) this.count(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength))
    if (opt.edits === 'shared') Y.applyUpdate(this.doc, payload, 'remote')
    return step === STEP2
  }

  count (bytes) {
    let at = bytes.indexOf(MARKER)
    const now = nowMicros()
    while (at >= 0 && at + FIELD_LEN <= bytes.length) {
      const micros = Number(bytes.toString('latin1', at + 4, at + 4 + MICROS_DIGITS))
      const sender = Number(bytes.toString('latin1', at + 5 + MICROS_DIGITS, at + 11 + MICROS_DIGITS))
      if (sender === this.index) {
        echoes++
      } else {
        delivered++
        lastDelivery = now
        latencies.push(now - micros)
      }
      at = bytes.indexOf(MARKER, at + FIELD_LEN)
    }
  }

  send () {
    const field = stamp(this.index)
    this.doc.transact(() => {
      if (opt.edits === 'append') {
        this.text.insert(this.appendAt, field)
        this.appendAt += field.length
      } else {
        this.text.insert(Math.floor(Math.random() * (this.text.length + 1)), field)
      }
    }, this)
  }
}

/** When client `index` sends, as ms offsets from the start of the window. */
function schedule (index) {
  const times = []
  if (opt.arrivals === 'poisson') {
    for (let at = -Math.log(1 - Math.random()) * period; at < durationMs; at += -Math.log(1 - Math.random()) * period) times.push(at)
  } else {
    const offset = period * index / clients
    for (let at = offset; at < durationMs; at += period) times.push(at)
  }
  return times
}

function percentile (sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] / 1000 : null
}

const cpuBeforeConnect = cpuSeconds(serverPid)
const all = Array.from({ length: clients }, (_, i) => new Client(i))
for (let i = 0; i < all.length; i += 50) await Promise.all(all.slice(i, i + 50).map((c) => c.connect()))

const ownCpuStart = process.cpuUsage()
const cpuStart = cpuSeconds(serverPid)
sending = true
const start = performance.now()
const timers = []
if (opt.arrivals === 'interval') {
  // What a quick script does: one setInterval per client, started in a loop.
  for (const c of all) timers.push(setInterval(() => c.send(), period))
  setTimeout(() => timers.forEach(clearInterval), durationMs)
} else {
  for (const c of all) {
    const times = schedule(c.index)
    let n = 0
    const next = () => {
      if (n >= times.length) return
      c.send()
      n++
      if (n < times.length) setTimeout(next, Math.max(0, start + times[n] - performance.now()))
    }
    if (times.length) setTimeout(next, times[0])
  }
}
await new Promise((resolve) => setTimeout(resolve, durationMs))
// Drain: until a second passes with no delivery, or ten seconds.
const drainEnd = performance.now() + 10000
for (let quiet = lastDelivery; performance.now() < drainEnd;) {
  await new Promise((resolve) => setTimeout(resolve, 1000))
  if (lastDelivery === quiet) break
  quiet = lastDelivery
}
const cpuEnd = cpuSeconds(serverPid)
const own = process.cpuUsage(ownCpuStart)
sending = false
finished = true
for (const c of all) c.ws.terminate()

const roomSize = clients / rooms
const expected = sent * (roomSize - 1)
latencies.sort((a, b) => a - b)
const windowCpu = cpuEnd - cpuStart
const wholeCpu = cpuEnd - cpuBeforeConnect
const round = (x, digits = 3) => (x === null ? null : Number(x.toFixed(digits)))
console.log(JSON.stringify({
  label: opt.label,
  generator: 'node',
  edits: opt.edits,
  arrivals: opt.arrivals,
  clients,
  rooms,
  rate,
  duration_s: durationMs / 1000,
  offered_dps: round(clients * rate * (roomSize - 1), 0),
  sent,
  expected,
  delivered,
  echoes,
  delivery_ratio: round(delivered / Math.max(1, expected), 4),
  closed_by_server: closedByServer.length,
  close_codes: [...new Set(closedByServer)],
  p50_ms: round(percentile(latencies, 0.5)),
  p99_ms: round(percentile(latencies, 0.99)),
  server_cpu_s: round(windowCpu, 2),
  cpu_us_per_delivery: round(delivered ? windowCpu * 1e6 / delivered : null, 2),
  cpu_us_per_delivery_with_setup: round(delivered ? wholeCpu * 1e6 / delivered : null, 2),
  loadgen_cpu_s: round((own.user + own.system) / 1e6, 2)
}))
process.exit(0)
