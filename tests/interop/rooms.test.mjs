// Rooms are isolated from each other, including rooms whose names differ
// only in case, contain '/', spaces or non-ASCII characters.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import {
  VERSIONS, Y, SYNC_STEP2, encodeSyncStep1, startServer, useScope, waitFor
} from './harness.mjs'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.dispose() })

test('rooms are isolated, whatever their names', async t => {
  const scope = useScope(t)
  const token = `${process.pid}x${Math.random().toString(36).slice(2, 7)}`
  // y-websocket appends the room name to the URL as it is; the WebSocket
  // URL parser then percent-encodes spaces and non-ASCII characters, which
  // the server must decode back.
  const names = [
    `Case-${token}`,
    `case-${token}`,
    `CASE-${token}`,
    `team/${token}`,
    `team/${token}/notes`,
    `team/${token}/notes/`,
    `with space ${token}`,
    `with  space ${token}`,
    `ünïcödé ${token} 日本語 🎉`,
    `unicode ${token} 日本語 🎉`,
    `plain-${token}`
  ]
  assert.equal(new Set(names).size, names.length)

  const writers = names.map((name, i) => scope.client(server, name, { version: VERSIONS[i % VERSIONS.length] }))
  const readers = names.map((name, i) => scope.client(server, name, { version: VERSIONS[(i + 1) % VERSIONS.length] }))
  writers.forEach((w, i) => {
    w.text().insert(0, `content of room #${i}`)
    w.map().set('room', names[i])
  })
  await waitFor(() => readers.every((r, i) => r.text().toString() === `content of room #${i}` && r.map().get('room') === names[i]),
    undefined, () => 'readers: ' + readers.map(r => JSON.stringify([r.text().toString(), r.map().toJSON()])).join(' | '))

  // What the server holds for each room: a fresh joiner's first sync. An
  // update applied to the wrong room would show up here.
  for (const [i, name] of names.entries()) {
    const fresh = await scope.syncedClient(server, name)
    assert.equal(fresh.text().toString(), `content of room #${i}`, `room ${JSON.stringify(name)} has foreign content`)
    assert.deepEqual(fresh.map().toJSON(), { room: name }, `room ${JSON.stringify(name)} has foreign map entries`)
    assert.equal(fresh.doc.store.clients.size, 1, `room ${JSON.stringify(name)} holds updates of ${fresh.doc.store.clients.size} clients`)
  }
  for (const c of [...writers, ...readers]) assert.deepEqual(c.closeEvents, [], `client of ${c.room} was disconnected`)
})

test('the room is the percent-decoded URL path', async t => {
  const scope = useScope(t)
  const name = `dir ${process.pid}/ノート 100% ✓`
  const writer = await scope.syncedClient(server, encodeURIComponent(name).replaceAll('%2F', '/'))
  writer.text().insert(0, 'hello')
  // A raw socket on a differently (but equivalently) encoded path: lower-
  // case hex and '/' encoded as %2f, which a WHATWG URL keeps as is.
  const encoded = encodeURIComponent(name).replace(/%[0-9A-F]{2}/g, m => m.toLowerCase())
  assert.ok(encoded.includes('%2f'))
  const raw = scope.raw(server, encoded)
  await raw.opened
  raw.send(encodeSyncStep1(new Y.Doc()))
  const step2 = await raw.nextMessage(m => m.type === 0 && m.sync === SYNC_STEP2)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, step2.payload)
  assert.equal(doc.getText('text').toString(), 'hello', `path ${encoded} is not the room ${name}`)
  doc.destroy()
})
