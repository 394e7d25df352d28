// The y-websocket wire protocol, byte by byte, on raw `ws` sockets (no
// provider): greeting, sync handshake, several messages per frame, unknown
// message types and awareness queries.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import {
  MSG_AWARENESS, MSG_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE, Y,
  concat, decodeAwarenessUpdate, decodeMessages, encodeAwareness, encodeQueryAwareness,
  encodeSyncStep1, encodeUpdate, encoding, frame, startServer, uniqueRoom, useScope, waitFor
} from './harness.mjs'
import * as awarenessProtocol from 'y-protocols/awareness'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.dispose() })

/** Asserts that a server frame holds exactly one message and returns it. */
function single (data) {
  const messages = decodeMessages(data)
  assert.equal(messages.length, 1, `server frame holds ${messages.length} messages; y-websocket reads one per frame`)
  return messages[0]
}

/** A Y.Text update inserting `text` in a fresh doc, and that doc. */
function textUpdate (text, name = 'text') {
  const doc = new Y.Doc()
  doc.getText(name).insert(0, text)
  return { doc, update: Y.encodeStateAsUpdate(doc) }
}

/** An awareness update for a made-up client id with `state`. */
function awarenessUpdate (clientID, clock, state) {
  return frame(e => {
    encoding.writeVarUint(e, 1)
    encoding.writeVarUint(e, clientID)
    encoding.writeVarUint(e, clock)
    encoding.writeVarString(e, JSON.stringify(state))
  })
}

test('first frame is SyncStep1 with the room state vector; SyncStep1 is answered with SyncStep2', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('handshake')

  // A cold, empty room: the state vector is empty.
  const first = scope.raw(server, room)
  const greeting = single((await first.next()).data)
  assert.equal(greeting.type, MSG_SYNC)
  assert.equal(greeting.sync, SYNC_STEP1)
  assert.equal(Y.decodeStateVector(greeting.payload).size, 0)

  // Answering with our own SyncStep1 yields a SyncStep2 (empty doc).
  first.send(encodeSyncStep1(new Y.Doc()))
  const emptyStep2 = single((await first.next()).data)
  assert.equal(emptyStep2.sync, SYNC_STEP2)

  // Give the room content through a provider.
  const writer = await scope.syncedClient(server, room)
  writer.text().insert(0, 'hello raw world')
  // The writer's edit is forwarded to the raw socket as sync Updates.
  const mirror = new Y.Doc()
  await first.nextMessage(m => {
    if (m.type !== MSG_SYNC || m.sync !== SYNC_UPDATE) return false
    Y.applyUpdate(mirror, m.payload)
    return mirror.getText('text').toString() === 'hello raw world'
  })

  // A second socket: greeting carries the room's state vector now.
  const second = scope.raw(server, room)
  const greeting2 = single((await second.next()).data)
  assert.equal(greeting2.sync, SYNC_STEP1)
  assert.deepEqual(Y.decodeStateVector(greeting2.payload), Y.decodeStateVector(Y.encodeStateVector(writer.doc)))

  // SyncStep1 with an empty state vector → the whole document.
  second.send(encodeSyncStep1(new Y.Doc()))
  const full = await second.nextMessage(m => m.type === MSG_SYNC && m.sync === SYNC_STEP2)
  const fullDoc = new Y.Doc()
  Y.applyUpdate(fullDoc, full.payload)
  assert.equal(fullDoc.getText('text').toString(), 'hello raw world')

  // SyncStep1 with a partial state vector → only what is missing.
  writer.text().insert(0, '>> ')
  await second.nextMessage(m => m.type === MSG_SYNC && m.sync === SYNC_UPDATE)
  second.send(encodeSyncStep1(fullDoc))
  const diff = await second.nextMessage(m => m.type === MSG_SYNC && m.sync === SYNC_STEP2)
  const known = Y.decodeStateVector(Y.encodeStateVector(fullDoc))
  for (const struct of Y.decodeUpdate(diff.payload).structs) {
    assert.ok(struct.id.clock >= (known.get(struct.id.client) ?? 0),
      `SyncStep2 resent ${struct.id.client}:${struct.id.clock} that the state vector already covers`)
  }
  Y.applyUpdate(fullDoc, diff.payload)
  assert.equal(fullDoc.getText('text').toString(), '>> hello raw world')
  assert.deepEqual(Y.encodeStateVector(fullDoc), Y.encodeStateVector(writer.doc))

  // Our SyncStep2 / Update are applied and forwarded to the provider.
  const { update } = textUpdate('from raw step2 ', 'other')
  second.send(frame(e => {
    encoding.writeVarUint(e, MSG_SYNC)
    encoding.writeVarUint(e, SYNC_STEP2)
    encoding.writeVarUint8Array(e, update)
  }))
  second.send(encodeUpdate(textUpdate('from raw update', 'third').update))
  await waitFor(() => writer.doc.getText('other').toString() === 'from raw step2 ' &&
    writer.doc.getText('third').toString() === 'from raw update', undefined, 'raw SyncStep2 / Update not applied')
  for (const { data } of [...first.frames, ...second.frames]) single(data)
  mirror.destroy()
  fullDoc.destroy()
})

test('several messages packed in one frame are all handled, in order', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('packed')
  const peer = await scope.syncedClient(server, room, { version: 'v2' })
  peer.awareness.setLocalStateField('user', { name: 'peer' })
  const raw = scope.raw(server, room)
  await raw.next() // SyncStep1 greeting
  // The peer's state, from the greeting or forwarded after it.
  await raw.nextMessage(m => m.type === MSG_AWARENESS &&
    decodeAwarenessUpdate(m.payload).get(peer.doc.clientID)?.state?.user?.name === 'peer')

  const rawClient = 4242
  const packed = concat(
    encodeUpdate(textUpdate('packed').update),
    encodeAwareness(awarenessUpdate(rawClient, 1, { user: { name: 'raw' } })),
    encodeQueryAwareness(),
    encodeSyncStep1(new Y.Doc())
  )
  raw.send(packed)

  // The update and the awareness state reach the provider.
  await waitFor(() => peer.text().toString() === 'packed', undefined, `peer text: ${peer.text()}`)
  await waitFor(() => peer.awareness.getStates().get(rawClient)?.user?.name === 'raw', undefined, 'awareness from packed frame not forwarded')

  // The query and the SyncStep1 are answered, in that order.
  const answers = []
  while (answers.length < 2) {
    const m = single((await raw.next()).data)
    if (m.type === MSG_AWARENESS || (m.type === MSG_SYNC && m.sync === SYNC_STEP2)) answers.push(m)
  }
  assert.equal(answers[0].type, MSG_AWARENESS, 'the awareness query (3rd message) was not answered before the SyncStep1 (4th)')
  const states = decodeAwarenessUpdate(answers[0].payload)
  assert.equal(states.get(peer.doc.clientID)?.state?.user?.name, 'peer')
  assert.equal(states.get(rawClient)?.state?.user?.name, 'raw')
  const doc = new Y.Doc()
  Y.applyUpdate(doc, answers[1].payload)
  assert.equal(doc.getText('text').toString(), 'packed', 'SyncStep2 does not include the update sent earlier in the same frame')
  doc.destroy()

  // The raw socket's awareness states are removed when it closes.
  raw.close()
  await waitFor(() => !peer.awareness.getStates().has(rawClient), undefined, 'raw client awareness not removed on close')
})

test('an unknown message type is ignored and the connection stays usable', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('unknown')
  const peer = await scope.syncedClient(server, room)
  const raw = scope.raw(server, room)
  await raw.next()

  const unknown = frame(e => {
    encoding.writeVarUint(e, 9)
    encoding.writeVarUint8Array(e, new Uint8Array([1, 2, 3, 0xff, 0x80]))
  })
  const unknownLarge = frame(e => {
    encoding.writeVarUint(e, 200) // two-byte varint type
    encoding.writeVarUint8Array(e, new Uint8Array(1000).fill(7))
  })
  raw.send(unknown)
  raw.send(unknownLarge)
  // Unknown messages before a known one in the same frame, too.
  raw.send(concat(unknown, encodeUpdate(textUpdate('after unknown').update), unknownLarge))

  await waitFor(() => peer.text().toString() === 'after unknown', undefined, 'update after unknown messages was lost')
  raw.send(encodeSyncStep1(new Y.Doc()))
  const step2 = await raw.nextMessage(m => m.type === MSG_SYNC && m.sync === SYNC_STEP2)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, step2.payload)
  assert.equal(doc.getText('text').toString(), 'after unknown')
  assert.ok(raw.isOpen, 'socket was closed')
  // Nothing of the unknown messages was forwarded to the peer.
  assert.deepEqual(peer.closeEvents, [])
  doc.destroy()
})

test('an awareness query returns the current awareness states', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('query')
  const raw = scope.raw(server, room)
  await raw.next()
  // No state yet: the answer holds no client with a state.
  raw.send(encodeQueryAwareness())
  const empty = await raw.nextMessage(m => m.type === MSG_AWARENESS)
  const emptyStates = decodeAwarenessUpdate(empty.payload)
  assert.deepEqual([...emptyStates.values()].filter(s => s.state !== null), [])

  const alice = await scope.syncedClient(server, room, { version: 'v1' })
  const bob = await scope.syncedClient(server, room, { version: 'v3' })
  alice.awareness.setLocalStateField('user', { name: 'alice' })
  bob.awareness.setLocalStateField('user', { name: 'bob' })
  await waitFor(() => bob.awareness.getStates().get(alice.doc.clientID)?.user?.name === 'alice' &&
    alice.awareness.getStates().get(bob.doc.clientID)?.user?.name === 'bob')

  raw.send(encodeQueryAwareness())
  // Skip the forwarded changes; the answer is the one with both states.
  const answer = await raw.nextMessage(m => {
    if (m.type !== MSG_AWARENESS) return false
    const s = decodeAwarenessUpdate(m.payload)
    return s.size >= 2
  })
  const states = decodeAwarenessUpdate(answer.payload)
  assert.equal(states.get(alice.doc.clientID)?.state?.user?.name, 'alice')
  assert.equal(states.get(bob.doc.clientID)?.state?.user?.name, 'bob')
  assert.equal(states.size, 2, `unexpected clients in the awareness answer: ${[...states.keys()]}`)

  // The answer decodes with y-protocols itself.
  const awareness = new awarenessProtocol.Awareness(new Y.Doc())
  awarenessProtocol.applyAwarenessUpdate(awareness, answer.payload, 'test')
  assert.equal(awareness.getStates().get(alice.doc.clientID)?.user?.name, 'alice')
  awareness.doc.destroy()

  // A new connection is greeted with SyncStep1, then the current states.
  const late = scope.raw(server, room)
  const [f1, f2] = [single((await late.next()).data), single((await late.next()).data)]
  assert.deepEqual([f1.type, f1.sync], [MSG_SYNC, SYNC_STEP1])
  assert.equal(f2.type, MSG_AWARENESS, 'second frame is not the awareness greeting')
  const greeted = decodeAwarenessUpdate(f2.payload)
  assert.equal(greeted.get(alice.doc.clientID)?.state?.user?.name, 'alice')
  assert.equal(greeted.get(bob.doc.clientID)?.state?.user?.name, 'bob')
})
