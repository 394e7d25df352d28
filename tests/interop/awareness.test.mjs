// Awareness (presence) through the server: states reach the other peers,
// late joiners get the current ones, and the server removes a peer's states
// when its socket closes, gracefully or not.
//
// y-websocket clients do not announce their own removal over the socket
// when destroyed, and their outdated-state timeout is 30 s, far beyond the
// waits here: a removal seen within them can only come from the server.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { VERSIONS, startServer, uniqueRoom, useScope, waitFor } from './harness.mjs'

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
