// Presence against hostile peers (issue 27, item 3), with real y-websocket
// clients: a browser-like presence keeps working unchanged, a raw socket
// that sends the same client id with a higher clock can neither rename nor
// remove it, and a state that is not JSON closes its sender (1002) without
// ever reaching, and breaking, the real clients.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import {
  MSG_AWARENESS, MSG_SYNC, encodeAwareness, encodeQueryAwareness, encoding,
  startServer, uniqueRoom, useScope, waitFor
} from './harness.mjs'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.dispose() })

/** An awareness update setting each `[clientID, clock, json]`, as y-protocols encodes one. */
function awarenessUpdate (entries) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, entries.length)
  for (const [clientID, clock, json] of entries) {
    encoding.writeVarUint(e, clientID)
    encoding.writeVarUint(e, clock)
    encoding.writeVarString(e, json)
  }
  return encoding.toUint8Array(e)
}

/** What a browser tab with y-codemirror shares. */
const presence = (name, anchor) => ({
  user: { name, color: '#30bced', colorLight: '#30bced33' },
  cursor: { anchor: { type: null, tname: 'text', item: { client: 1, clock: anchor }, assoc: 0 }, head: null }
})

const nameSeenBy = (client, id) => client.awareness.getStates().get(id)?.user?.name
const clockSeenBy = (client, id) => client.awareness.meta.get(id)?.clock

/**
 * A raw socket in `room` that has read its greeting (sync step 1 and the
 * room's awareness), so the next awareness message it reads is news.
 */
async function rawPeer (scope, room) {
  const socket = scope.raw(server, encodeURIComponent(room))
  await socket.opened
  await socket.nextMessage(m => m.type === MSG_SYNC)
  await socket.nextMessage(m => m.type === MSG_AWARENESS)
  return socket
}

test('a spoofer cannot rename or remove a y-websocket client\'s presence', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('hostile-aw')
  const owner = await scope.syncedClient(server, room, { version: 'v3' })
  const observer = await scope.syncedClient(server, room, { version: 'v3' })
  const ownerId = owner.doc.clientID

  owner.awareness.setLocalState(presence('ann', 1))
  await waitFor(() => nameSeenBy(observer, ownerId) === 'ann', undefined, 'presence never arrived')

  // The spoofer renames ann with a far higher clock, then removes her, and
  // asks for the room's states: the answer comes after both were handled.
  const spoofer = await rawPeer(scope, room)
  const fake = JSON.stringify(presence('mallory', 666))
  spoofer.send(encodeAwareness(awarenessUpdate([[ownerId, 1000, fake]])))
  spoofer.send(encodeAwareness(awarenessUpdate([[ownerId, 1001, 'null']])))
  spoofer.send(encodeQueryAwareness())
  const answer = await spoofer.nextMessage(m => m.type === MSG_AWARENESS)
  assert.ok(spoofer.isOpen, 'ignored, not closed')
  assert.ok(!Buffer.from(answer.payload).toString().includes('mallory'), 'the room holds the fake state')

  // Ann moves her cursor (y-protocols bumps her clock by one): the observer
  // takes it, which it would not had it seen clock 1000; and it shows her
  // exactly as she set herself.
  owner.awareness.setLocalStateField('cursor', presence('ann', 2).cursor)
  await waitFor(() => observer.awareness.getStates().get(ownerId)?.cursor?.anchor?.item?.clock === 2,
    undefined, () => `observer sees ${JSON.stringify([...observer.awareness.getStates()])}`)
  assert.equal(nameSeenBy(observer, ownerId), 'ann')
  assert.equal(clockSeenBy(observer, ownerId), clockSeenBy(owner, ownerId))
  // Ann's own client never adopted the fake state for her id.
  assert.equal(owner.awareness.getLocalState().user.name, 'ann')

  // A late joiner sees ann as she is.
  const late = await scope.syncedClient(server, room, { version: 'v2' })
  await waitFor(() => nameSeenBy(late, ownerId) === 'ann', undefined, 'late joiner did not get ann')

  // Her leaving still removes her for everyone.
  owner.destroy()
  await waitFor(() => !observer.awareness.getStates().has(ownerId) && !late.awareness.getStates().has(ownerId),
    undefined, 'ann was not removed when she left')
})

test('a state that is not JSON closes its sender and never reaches y-websocket clients', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('hostile-json')
  const a = await scope.syncedClient(server, room, { version: 'v3' })
  const b = await scope.syncedClient(server, room, { version: 'v3' })
  a.awareness.setLocalState(presence('a', 1))
  await waitFor(() => nameSeenBy(b, a.doc.clientID) === 'a')

  const attacker = await rawPeer(scope, room)
  attacker.send(encodeAwareness(awarenessUpdate([[424242, 1, 'not json {']])))
  const { code } = await attacker.waitClosed()
  assert.equal(code, 1002)

  // Both real clients still sync and share presence.
  a.text().insert(0, 'still syncing')
  await waitFor(() => b.text().toString() === 'still syncing', undefined, 'edits stopped flowing')
  b.awareness.setLocalState(presence('b', 3))
  await waitFor(() => nameSeenBy(a, b.doc.clientID) === 'b', undefined, 'presence stopped flowing')
  assert.equal(a.awareness.getStates().has(424242), false)
  assert.equal(b.awareness.getStates().has(424242), false)
  // Nothing the server sent them was unreadable: they never reconnected.
  assert.deepEqual([...a.closeEvents, ...b.closeEvents], [])
})
