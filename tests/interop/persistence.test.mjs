// Content outlives its clients: after the room is unloaded from memory, and
// across a server restart on the same SQLite file.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { snapshot, uniqueRoom, useScope, waitConverged, waitFor } from './harness.mjs'

/** Makes a few edits of every kind through two clients of different versions. */
async function editTogether (scope, server, room, tag) {
  const a = await scope.syncedClient(server, room, { version: 'v3' })
  const b = await scope.syncedClient(server, room, { version: 'v1' })
  a.text().insert(a.text().length, `${tag}-a `)
  b.text().insert(0, `${tag}-b `)
  a.map().set(`${tag}-a`, { n: 1 })
  b.map().set(`${tag}-b`, [1, 2])
  a.array().push([`${tag}-a`])
  b.array().push([`${tag}-b`])
  await waitConverged([a, b])
  return [a, b]
}

test('content survives after every client left and the room was unloaded', async t => {
  const scope = useScope(t)
  const server = await scope.server({ args: ['--room-idle-timeout', '500ms'] })
  const room = uniqueRoom('idle')

  const [a, b] = await editTogether(scope, server, room, 'first')
  const expected = snapshot(a.doc)
  a.destroy()
  b.destroy()
  await server.waitRoomUnloaded(room)

  const c = await scope.syncedClient(server, room, { version: 'v2' })
  assert.equal(snapshot(c.doc), expected, 'a client joining the unloaded room did not get its content back')
  await waitFor(() => server.roomLoads(room) >= 2, undefined, 'the room was not loaded again from storage')
  assert.equal(server.roomLoads(room), 2)

  // A second round on top of the reloaded document, unloaded again.
  c.text().insert(0, 'second ')
  c.map().set('second', true)
  const expectedAgain = snapshot(c.doc)
  c.destroy()
  await server.waitRoomUnloaded(room, { times: 2 })
  const d = await scope.syncedClient(server, room, { version: 'v3' })
  assert.equal(snapshot(d.doc), expectedAgain)
  const text = d.text().toString()
  assert.ok(text.startsWith('second ') && text.includes('first-a ') && text.includes('first-b '), text)
})

test('content survives a server restart (SIGTERM, then restart on the same database file)', async t => {
  const scope = useScope(t)
  const dir = scope.tempDir()
  // Room "live" still has clients when SIGTERM arrives; room "left" was
  // edited and left, but not yet unloaded (the default idle timeout is long).
  const live = uniqueRoom('live')
  const left = uniqueRoom('left')

  const first = await scope.server({ dir })
  const liveClients = await editTogether(scope, first, live, 'one')
  const leftClients = await editTogether(scope, first, left, 'one')
  const expectedLive = snapshot(liveClients[0].doc)
  const expectedLeft = snapshot(leftClients[0].doc)
  for (const c of leftClients) c.destroy()

  const stopped = await first.stop()
  assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, `server did not shut down cleanly:\n${first.logTail()}`)
  for (const c of liveClients) {
    // The process may exit before this process has read the close frame.
    await waitFor(() => c.closeEvents.length > 0, undefined, `${c.version} client saw no close at shutdown`)
    assert.equal(c.closeEvents[0].code, 1001,
      `${c.version} client was not closed with 1001 at shutdown: ${JSON.stringify(c.closeEvents)}`)
    c.destroy()
  }

  const second = await scope.server({ dir })
  const liveAgain = await scope.syncedClient(second, live, { version: 'v2' })
  const leftAgain = await scope.syncedClient(second, left, { version: 'v1' })
  assert.equal(snapshot(liveAgain.doc), expectedLive, 'room with connected clients lost content across the restart')
  assert.equal(snapshot(leftAgain.doc), expectedLeft, 'room without clients lost content across the restart')

  // Edit on top of the restored state and restart once more: the new
  // snapshot must build on the old one.
  liveAgain.text().insert(0, 'two ')
  liveAgain.array().push(['two'])
  // Make sure the server applied the edit before it is stopped: a second
  // client sees it only after the server did.
  const witness = await scope.syncedClient(second, live, { version: 'v3' })
  await waitConverged([liveAgain, witness])
  const expectedLive2 = snapshot(liveAgain.doc)
  liveAgain.destroy()
  witness.destroy()
  leftAgain.destroy()
  assert.deepEqual(await second.stop(), { code: 0, signal: null, killed: false }, second.logTail())

  const third = await scope.server({ dir })
  const liveThird = await scope.syncedClient(third, live)
  const leftThird = await scope.syncedClient(third, left)
  assert.equal(snapshot(liveThird.doc), expectedLive2)
  assert.equal(snapshot(leftThird.doc), expectedLeft)
  assert.ok(liveThird.text().toString().startsWith('two '), liveThird.text().toString())
})
