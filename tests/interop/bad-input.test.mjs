// Hostile or broken input on raw sockets: each gets its own close code (or
// HTTP 400 for a bad room name), and well-behaved providers in the same
// room keep working: they stay connected, can still edit, and a third
// client sees their edits.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import {
  MSG_SYNC, SYNC_STEP2, Y, concat, decodeAwarenessUpdate, encodeAwareness, encodeSyncStep1,
  encodeUpdate, encoding, frame, prng, startServer, uniqueRoom, upgradeStatus, useScope, waitFor
} from './harness.mjs'

const MAX_MESSAGE_SIZE = 64 * 1024

let server
before(async () => { server = await startServer({ args: ['--max-message-size', '64KiB'] }) })
after(async () => { await server?.dispose() })

const PROTOCOL_ERROR = 1002
const UNSUPPORTED_DATA = 1003
const MESSAGE_TOO_BIG = 1009

/** Two providers of different versions, synced in a fresh room. */
async function witnesses (scope, prefix) {
  const room = uniqueRoom(prefix)
  const a = await scope.syncedClient(server, room, { version: 'v3' })
  const b = await scope.syncedClient(server, room, { version: 'v1' })
  a.text().insert(0, 'before.')
  await waitFor(() => b.text().toString() === 'before.')
  return { room, a, b }
}

/**
 * The room still works for the providers: neither was disconnected, an edit
 * of one reaches the other, and a third client joining now gets exactly
 * their content (nothing of the bad input was applied).
 */
async function assertRoomHealthy (scope, { room, a, b }, marker) {
  a.text().insert(a.text().length, ` ${marker}.`)
  b.map().set(marker, true)
  await waitFor(() => b.text().toString().endsWith(` ${marker}.`) && a.map().get(marker) === true, undefined,
    () => `edits after ${marker} did not get through: a=${a.text()} b=${b.text()}`)
  assert.deepEqual(a.closeEvents, [], `provider a was disconnected: ${JSON.stringify(a.closeEvents)}\n${server.logTail()}`)
  assert.deepEqual(b.closeEvents, [], `provider b was disconnected: ${JSON.stringify(b.closeEvents)}\n${server.logTail()}`)
  const c = await scope.syncedClient(server, room, { version: 'v2' })
  assert.equal(c.text().toString(), a.text().toString())
  assert.deepEqual(c.map().toJSON(), a.map().toJSON())
  assert.deepEqual(Y.encodeStateVector(c.doc), Y.encodeStateVector(a.doc), 'the room holds state its providers do not')
}

/**
 * Opens a raw socket in `room`, waits for the server's greeting (so the
 * socket has joined), sends `frames`, then (unless `probe` is false) a
 * probe: a valid SyncStep1.
 * Returns the close code, or a description if the server instead answered
 * the probe, i.e. accepted the bad input and kept the connection open.
 */
async function closeCodeFor (scope, room, frames, { text = false, fragments = false, probe = true } = {}) {
  const raw = scope.raw(server, room)
  await raw.next()
  if (fragments) {
    frames.forEach((f, i) => raw.ws.send(f, { binary: true, fin: i === frames.length - 1 }))
  } else {
    for (const f of frames) text ? raw.sendText(f) : raw.send(f)
  }
  if (!probe) return (await raw.waitClosed()).code
  raw.send(encodeSyncStep1(new Y.Doc()))
  const answered = () => raw.frames.some(f => f.data[0] === MSG_SYNC && f.data[1] === SYNC_STEP2)
  await waitFor(() => answered() || raw.ws.readyState === raw.ws.CLOSED, undefined, 'server neither closed nor answered')
  if (answered()) return 'connection kept open: the server accepted the input and answered the next message'
  const { code } = await raw.waitClosed()
  return code
}

const hex = bytes => Buffer.from(bytes).toString('hex').slice(0, 80)

describe('malformed frames close the sender with 1002; the room keeps working', () => {
  test('truncated frames', async t => {
    const scope = useScope(t)
    const room = await witnesses(scope, 'truncated')

    // The bad client first shows up in awareness, so we can check that its
    // state is removed when it is kicked out.
    const raw = scope.raw(server, room.room)
    await raw.next()
    const badClient = 31337
    raw.send(encodeAwareness(frame(e => {
      encoding.writeVarUint(e, 1)
      encoding.writeVarUint(e, badClient)
      encoding.writeVarUint(e, 1)
      encoding.writeVarString(e, JSON.stringify({ user: 'mallory' }))
    })))
    await waitFor(() => room.b.awareness.getStates().get(badClient)?.user === 'mallory')
    const doc = new Y.Doc()
    doc.getText('text').insert(0, 'never applied')
    const update = encodeUpdate(Y.encodeStateAsUpdate(doc))
    raw.send(update.slice(0, update.length - 3))
    assert.equal((await raw.waitClosed()).code, PROTOCOL_ERROR)
    await waitFor(() => !room.b.awareness.getStates().has(badClient), undefined,
      'awareness of the kicked client was not removed')

    const truncated = [
      new Uint8Array([MSG_SYNC]), // sync message without its sub-type
      new Uint8Array([MSG_SYNC, 0]), // SyncStep1 without its state vector
      new Uint8Array([MSG_SYNC, 2, 10, 1, 2]), // update announcing 10 bytes, carrying 2
      encodeSyncStep1(doc).slice(0, 4),
      new Uint8Array([1, 5, 1]), // awareness announcing 5 bytes
      new Uint8Array([9, 5, 1]) // unknown type announcing 5 bytes
    ]
    for (const bytes of truncated) {
      assert.equal(await closeCodeFor(scope, room.room, [bytes]), PROTOCOL_ERROR, `frame ${hex(bytes)}`)
    }
    assert.equal(await closeCodeFor(scope, room.room, [new Uint8Array(0)]), PROTOCOL_ERROR, 'empty frame')
    await assertRoomHealthy(scope, room, 'after-truncated')
    assert.ok(!room.a.text().toString().includes('never applied'))
  })

  // Server bug (see the interop report): yrs' MessageReader treats
  // EndOfBuffer as the end of the frame, so a truncated message after a
  // complete one is silently dropped, the complete one is applied and
  // broadcast, and the connection stays open. protocol::parse_frame
  // documents the opposite: any malformed message refuses the whole frame.
  test('a frame whose last message is truncated is refused as a whole, valid messages before it included', async t => {
    const scope = useScope(t)
    const room = await witnesses(scope, 'truncated-tail')
    const doc = new Y.Doc()
    doc.getText('text').insert(0, 'never applied')
    const update = encodeUpdate(Y.encodeStateAsUpdate(doc))
    const bytes = concat(update, update.slice(0, 5))
    assert.equal(await closeCodeFor(scope, room.room, [bytes]), PROTOCOL_ERROR, `frame ${hex(bytes)}`)
    await assertRoomHealthy(scope, room, 'after-truncated-tail')
    assert.ok(!room.a.text().toString().includes('never applied'), 'the valid part of a refused frame was applied')
  })

  test('random bytes (fixed seeds)', async t => {
    const scope = useScope(t)
    const room = await witnesses(scope, 'random')
    for (let seed = 1; seed <= 12; seed++) {
      const rng = prng(seed)
      const bytes = rng.bytes(1 + rng.int(300))
      // Make half of them look like sync messages so they get past the
      // message-type dispatch.
      if (seed % 2 === 0) bytes.set([MSG_SYNC, rng.int(3)], 0)
      assert.equal(await closeCodeFor(scope, room.room, [bytes]), PROTOCOL_ERROR, `seed ${seed}: ${hex(bytes)}`)
    }
    await assertRoomHealthy(scope, room, 'after-random')
  })

  test('oversized varint lengths', async t => {
    const scope = useScope(t)
    const room = await witnesses(scope, 'varint')
    const frames = [
      // update length 2^64-ish: overflows any integer
      new Uint8Array([MSG_SYNC, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
      // update length 2^28 - 1 in a 6-byte frame
      new Uint8Array([MSG_SYNC, 2, 0xff, 0xff, 0xff, 0x7f]),
      // state vector length 2^32 in a SyncStep1
      new Uint8Array([MSG_SYNC, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0]),
      // awareness payload of 4 GiB
      new Uint8Array([1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]),
      // a message type varint that never ends
      new Uint8Array(16).fill(0xff),
      // the whole frame is continuation bytes after a sync type
      new Uint8Array([MSG_SYNC, ...new Array(40).fill(0x80)])
    ]
    for (const bytes of frames) {
      assert.equal(await closeCodeFor(scope, room.room, [bytes]), PROTOCOL_ERROR, `frame ${hex(bytes)}`)
    }
    await assertRoomHealthy(scope, room, 'after-varint')
  })

  test('sync messages whose payload is not a Yjs update', async t => {
    const scope = useScope(t)
    const room = await witnesses(scope, 'notyjs')
    const rng = prng(77)
    const payloads = [
      new Uint8Array([1]), // one client, then nothing
      new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x07, 0]), // 2^31 clients announced
      new Uint8Array([1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0, 0]), // 4G structs for one client
      new TextEncoder().encode('{"this":"is json, not a yjs update"}'),
      rng.bytes(64)
    ]
    for (const payload of payloads) {
      for (const sub of [SYNC_STEP2, 2]) {
        const bytes = frame(e => {
          encoding.writeVarUint(e, MSG_SYNC)
          encoding.writeVarUint(e, sub)
          encoding.writeVarUint8Array(e, payload)
        })
        assert.equal(await closeCodeFor(scope, room.room, [bytes]), PROTOCOL_ERROR, `sync ${sub} payload ${hex(payload)}`)
      }
    }
    await assertRoomHealthy(scope, room, 'after-notyjs')
  })
})

describe('frame size limit (--max-message-size 64KiB)', () => {
  test('a frame over the limit is closed with 1009; one at the limit is accepted', async t => {
    const scope = useScope(t)
    const room = await witnesses(scope, 'big')

    // Exactly the limit: an (ignored) unknown message padded to 64 KiB.
    const atLimit = new Uint8Array(MAX_MESSAGE_SIZE)
    const payloadLength = MAX_MESSAGE_SIZE - 1 - 3 // type byte + 3-byte length varint
    atLimit.set(frame(e => { encoding.writeVarUint(e, 9); encoding.writeVarUint(e, payloadLength) }), 0)
    const raw = scope.raw(server, room.room)
    await raw.next()
    raw.send(atLimit)
    raw.send(encodeSyncStep1(new Y.Doc()))
    await raw.nextMessage(m => m.type === MSG_SYNC && m.sync === SYNC_STEP2)
    assert.ok(raw.isOpen, 'a frame of exactly --max-message-size was refused')
    raw.close()

    // No probe after these: the server closes on the frame itself, and
    // data sent after an oversized frame runs into the bug tested below.
    const tooBig = (frames, options) => closeCodeFor(scope, room.room, frames, { probe: false, ...options })
    assert.equal(await tooBig([new Uint8Array(MAX_MESSAGE_SIZE + 1)]), MESSAGE_TOO_BIG, 'limit + 1 byte')
    // A valid Yjs update that is simply too large.
    const doc = new Y.Doc()
    doc.getText('text').insert(0, 'x'.repeat(100_000))
    assert.equal(await tooBig([encodeUpdate(Y.encodeStateAsUpdate(doc))]), MESSAGE_TOO_BIG, 'large update')
    // A message split into fragments that are each small but add up to
    // more than the limit.
    assert.equal(await tooBig([new Uint8Array(40_000), new Uint8Array(40_000)], { fragments: true }),
      MESSAGE_TOO_BIG, 'fragmented message over the limit')

    await assertRoomHealthy(scope, room, 'after-big')
    assert.ok(!room.a.text().toString().includes('xxxx'))
  })

  // Server bug (see the interop report): after refusing an oversized frame
  // the server sends its 1009 close frame but then drops the socket while
  // the client's data (the rest of a large frame, or anything sent after
  // it) is still unread, so the kernel answers with a TCP reset and the
  // client usually sees 1006 (abnormal closure) instead of 1009. Each
  // attempt alone is a race; together they fail reliably until the server
  // drains the socket before closing it.
  test('a frame far over the limit, followed by more data, still gets 1009 (not a reset that hides it)', async t => {
    const scope = useScope(t)
    const room = await witnesses(scope, 'huge')
    const codes = []
    for (let attempt = 0; attempt < 20; attempt++) {
      codes.push(await closeCodeFor(scope, room.room, [new Uint8Array(4 * 1024 * 1024), new Uint8Array([MSG_SYNC, 0, 0])], { probe: false }))
    }
    const wrong = codes.filter(code => code !== MESSAGE_TOO_BIG)
    assert.equal(wrong.length, 0, `${wrong.length} of ${codes.length} oversized frames were not closed with 1009; close codes seen: ${codes.join(',')}`)
    await assertRoomHealthy(scope, room, 'after-huge')
  })
})

test('a text frame is closed with 1003', async t => {
  const scope = useScope(t)
  const room = await witnesses(scope, 'text')
  assert.equal(await closeCodeFor(scope, room.room, ['hello'], { text: true }), UNSUPPORTED_DATA)
  // Even one whose bytes would be a valid binary message.
  const valid = Buffer.from(encodeSyncStep1(new Y.Doc())).toString('latin1')
  assert.equal(await closeCodeFor(scope, room.room, [valid], { text: true }), UNSUPPORTED_DATA)
  await assertRoomHealthy(scope, room, 'after-text')
})

test('an invalid room name gets HTTP 400 before any upgrade', async t => {
  const scope = useScope(t)
  const room = await witnesses(scope, 'names')
  const bad = {
    'control character (LF)': 'a%0Ab',
    'control character (NUL)': 'a%00b',
    'control character (DEL)': 'a%7Fb',
    'control character (C1, U+0085)': 'a%C2%85b',
    '257 bytes': 'x'.repeat(257),
    '258 bytes of 3-byte characters (86 chars)': '%E2%82%AC'.repeat(86),
    'invalid UTF-8 after decoding': '%FF',
    'truncated UTF-8 sequence': 'ab%E2%82',
    'overlong UTF-8 encoding of "/"': '%C0%AF'
  }
  for (const [what, path] of Object.entries(bad)) {
    assert.equal(await upgradeStatus(server, path), 400, `${what}: /${path.slice(0, 40)}`)
  }
  // No name at all is not a y-websocket room: it is where Hocuspocus
  // providers connect (they name their documents in their messages).
  assert.equal(await upgradeStatus(server, ''), 101, '/ upgrades for Hocuspocus providers')
  // The boundaries are accepted.
  const good = {
    '256 bytes': 'x'.repeat(256),
    '255 bytes of 3-byte characters': '%E2%82%AC'.repeat(85),
    'URL punctuation': "a!$&'()*+,;=:@-._~b"
  }
  for (const [what, path] of Object.entries(good)) {
    assert.equal(await upgradeStatus(server, path), 101, `${what}: /${path.slice(0, 40)}`)
  }
  await assertRoomHealthy(scope, room, 'after-names')
})

test('the awareness of a well-behaved client survives others being kicked', async t => {
  const scope = useScope(t)
  const room = await witnesses(scope, 'aw')
  room.a.awareness.setLocalStateField('user', 'alice')
  await waitFor(() => room.b.awareness.getStates().get(room.a.doc.clientID)?.user === 'alice')
  await closeCodeFor(scope, room.room, [new Uint8Array([MSG_SYNC])])
  await closeCodeFor(scope, room.room, [new Uint8Array(MAX_MESSAGE_SIZE + 1)], { probe: false })
  await closeCodeFor(scope, room.room, ['x'], { text: true })
  // A new raw socket is greeted with alice's state still there.
  const raw = scope.raw(server, room.room)
  await raw.next()
  const greeting = await raw.nextMessage(m => m.type === 1)
  assert.equal(decodeAwarenessUpdate(greeting.payload).get(room.a.doc.clientID)?.state?.user, 'alice')
  assert.equal(room.b.awareness.getStates().get(room.a.doc.clientID)?.user, 'alice')
  await assertRoomHealthy(scope, room, 'after-aw')
})
