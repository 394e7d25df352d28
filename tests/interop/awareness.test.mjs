// Awareness (presence) through the server: states reach the other peers,
// late joiners get the current ones, and the server removes a peer's states
// when its socket closes, gracefully or not.
//
// y-websocket clients do not announce their own removal over the socket
// when destroyed, and their outdated-state timeout is 30 s, far beyond the
// waits here: a removal seen within them can only come from the server.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { MSG_AWARENESS, VERSIONS, decodeAwarenessUpdate, decodeMessages, startServer, uniqueRoom, useScope, waitFor } from './harness.mjs'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.dispose() })

const userOf = (client, clientID) => client.awareness.getStates().get(clientID)?.user

for (const how of ['graceful', 'abrupt']) {
  describe(`awareness appears and disappears when its owner disconnects (${how})`, () => {
    for (const version of VERSIONS) {
      test(`owner on y-websocket ${version}`, async t => {
        const scope = useScope(t)
        const room = uniqueRoom(`aw-${how}-${version}`)
        const owner = await scope.syncedClient(server, room, { version })
        const observer = await scope.syncedClient(server, room, { version: version === 'v3' ? 'v1' : 'v3' })
        const ownerId = owner.doc.clientID
        const observerId = observer.doc.clientID

        owner.awareness.setLocalStateField('user', { name: 'owner', color: '#f00' })
        observer.awareness.setLocalStateField('user', { name: 'observer' })
        await waitFor(() => userOf(observer, ownerId)?.name === 'owner', undefined,
          () => `observer sees ${JSON.stringify([...observer.awareness.getStates()])}`)
        await waitFor(() => userOf(owner, observerId)?.name === 'observer', undefined,
          () => `owner sees ${JSON.stringify([...owner.awareness.getStates()])}`)

        // Changes of an existing state are forwarded too.
        owner.awareness.setLocalStateField('user', { name: 'owner', cursor: 7 })
        await waitFor(() => userOf(observer, ownerId)?.cursor === 7, undefined, 'state change not forwarded')

        // A late joiner gets the current states in its greeting, before its
        // first sync completes.
        const late = await scope.syncedClient(server, room, { version })
        await waitFor(() => userOf(late, ownerId)?.cursor === 7 && userOf(late, observerId)?.name === 'observer',
          undefined, () => `late joiner sees ${JSON.stringify([...late.awareness.getStates()])}`)

        if (how === 'graceful') {
          owner.destroy()
        } else {
          owner.terminateAbruptly()
        }
        await waitFor(() => !observer.awareness.getStates().has(ownerId) && !late.awareness.getStates().has(ownerId),
          undefined, () => `owner's state was not removed: observer sees ${JSON.stringify([...observer.awareness.getStates()])}`)
        // The observer itself is still present for the others.
        assert.equal(userOf(late, observerId)?.name, 'observer')

        // The server forgot the state too: a new joiner does not get it.
        const newcomer = await scope.syncedClient(server, room, { version: 'v2' })
        await waitFor(() => userOf(newcomer, observerId)?.name === 'observer', undefined, 'newcomer got no awareness greeting')
        assert.equal(newcomer.awareness.getStates().has(ownerId), false,
          'a new joiner received the awareness state of a disconnected client')
      })
    }
  })
}

test('a client clearing its own state (setLocalState(null)) is removed for the others', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('aw-clear')
  const a = await scope.syncedClient(server, room, { version: 'v3' })
  const b = await scope.syncedClient(server, room, { version: 'v2' })
  a.awareness.setLocalStateField('user', { name: 'a' })
  await waitFor(() => userOf(b, a.doc.clientID)?.name === 'a')
  a.awareness.setLocalState(null)
  await waitFor(() => !b.awareness.getStates().has(a.doc.clientID), undefined, 'cleared state still visible')
  a.awareness.setLocalState({ user: { name: 'a again' } })
  await waitFor(() => userOf(b, a.doc.clientID)?.name === 'a again', undefined, 'state set after clearing was not forwarded')
})

// A dropped connection: the server removes the client's state for the
// others, and the provider reconnects with that state unchanged (same
// clock), which the others ignore as the one just removed. Its next change
// must show again at once, for the others and for the room: the removal
// carries the state's own clock, so one change is past it.
for (const version of VERSIONS) {
  test(`a client back after a dropped connection shows again at its first change (y-websocket ${version})`, async t => {
    const scope = useScope(t)
    const room = uniqueRoom(`aw-back-${version}`)
    const owner = await scope.syncedClient(server, room, { version })
    const observer = await scope.syncedClient(server, room, { version: version === 'v3' ? 'v2' : 'v3' })
    const ownerId = owner.doc.clientID
    owner.awareness.setLocalStateField('user', { name: 'owner', cursor: 1 })
    await waitFor(() => userOf(observer, ownerId)?.cursor === 1, undefined, 'state not forwarded')

    owner.provider.ws.close()
    await waitFor(() => !observer.awareness.getStates().has(ownerId), undefined, 'dropped client not removed')
    await waitFor(() => owner.connected && owner.synced, undefined, 'the provider did not reconnect')
    owner.awareness.setLocalStateField('user', { name: 'owner', cursor: 2 })
    // Well inside the 15 s renewal, which would bring it back anyway.
    await waitFor(() => userOf(observer, ownerId)?.cursor === 2, 5000,
      () => `the observer sees ${JSON.stringify([...observer.awareness.getStates()])}`)
    const newcomer = await scope.syncedClient(server, room, { version: 'v2' })
    await waitFor(() => userOf(newcomer, ownerId)?.cursor === 2, undefined, 'the room did not take it back')
  })
}

// A presence storm: everyone moves at once. The server holds the changes
// of one awareness window and sends them as one message (--awareness-window),
// so a peer gets far fewer awareness frames than there were moves, and stock
// clients of every version must still end with everyone's newest cursor.
test('a presence storm reaches every stock client coalesced, newest cursor last', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('aw-storm')
  const clients = []
  for (let i = 0; i < 9; i++) {
    clients.push(await scope.syncedClient(server, room, { version: VERSIONS[i % VERSIONS.length] }))
  }
  const watcher = scope.raw(server, room)
  await watcher.opened
  const moves = 40
  for (let move = 1; move <= moves; move++) {
    for (const [i, client] of clients.entries()) {
      client.awareness.setLocalStateField('cursor', { client: i, move })
    }
    await new Promise(resolve => setTimeout(resolve, 2))
  }
  const newest = (client, other) => client.awareness.getStates().get(other.doc.clientID)?.cursor?.move
  await waitFor(() => clients.every(a => clients.every(b => a === b || newest(a, b) === moves)), undefined,
    () => `not every client sees every other's last move: ${JSON.stringify(clients.map(a => clients.map(b => newest(a, b))))}`)

  // The watcher saw every client's last move, in fewer frames than moves.
  const seen = new Map()
  let awarenessFrames = 0
  await waitFor(() => {
    for (; watcher.cursor < watcher.frames.length; watcher.cursor++) {
      const messages = decodeMessages(watcher.frames[watcher.cursor].data).filter(m => m.type === MSG_AWARENESS)
      awarenessFrames += messages.length
      for (const m of messages) {
        for (const [id, { state }] of decodeAwarenessUpdate(m.payload)) seen.set(id, state?.cursor?.move)
      }
    }
    return clients.every(c => seen.get(c.doc.clientID) === moves)
  }, undefined, () => `the watcher's last moves: ${JSON.stringify([...seen])}`)
  const changes = clients.length * moves
  assert.ok(awarenessFrames < changes / 3,
    `${awarenessFrames} awareness messages for ${changes} moves: not coalesced`)
})
