// Access that ends, with real y-websocket clients and the real binary: a
// session whose token expires is closed with 4401 and nothing it sends
// afterwards is applied; a revoked subject is closed with 4403 on both
// nodes of a cluster (shared Postgres and Redis), refused when it comes
// back, also after a restart, while everyone else carries on.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { runCli, uniqueRoom, upgradeStatus, useScope, waitFor } from './harness.mjs'

const SECRET = 'access-secret-0123456789'

async function mint ({ room, role = 'write', ttl = '1h', sub }) {
  const args = ['token', '--auth-secret', SECRET, '--room', room, '--role', role, '--ttl', ttl]
  if (sub) args.push('--sub', sub)
  const { code, stdout, stderr } = await runCli(args)
  assert.equal(code, 0, stderr)
  return stdout.trim()
}

async function roomText (server, room) {
  const admin = await mint({ room: '**', role: 'admin' })
  const response = await fetch(`${server.httpUrl}/api/rooms/${encodeURIComponent(room)}/json`, {
    headers: { authorization: `Bearer ${admin}` }
  })
  return response.ok ? (await response.json()).text : undefined
}

const closedWith = (client, code) => client.closeEvents.some(e => e.code === code)

test('a session whose token expires is closed with 4401 and what it sends later is not applied', async t => {
  const scope = useScope(t)
  const server = await scope.server({ args: ['--auth-secret', SECRET, '--auth-leeway', '0s'] })
  const room = uniqueRoom('expiring')
  const token = await mint({ room, ttl: '3s', sub: 'temp' })
  const client = await scope.syncedClient(server, room, { params: { token } })
  client.text().insert(0, 'in time')
  await waitFor(async () => (await roomText(server, room)) === 'in time')

  await waitFor(() => closedWith(client, 4401), 10_000,
    () => `no 4401 close: ${JSON.stringify(client.closeEvents)}`)
  client.text().insert(0, 'too late ')
  // The provider keeps trying with its expired token: refused before the upgrade.
  await waitFor(() => server.countLogLines('session closed', 'token expired', 'sub="temp"') >= 1, 5_000,
    () => `no audit line:\n${server.logTail()}`)
  assert.equal(await upgradeStatus(server, `${encodeURIComponent(room)}?token=${token}`), 401)
  assert.equal(await roomText(server, room), 'in time', 'an edit after expiry reached the room')
})

test('a revoked subject is closed with 4403 on every node and stays out, also after a restart', async t => {
  const scope = useScope(t)
  const databaseUrl = await scope.postgresDatabase()
  const args = [
    '--auth-secret', SECRET,
    '--redis-url', 'redis://127.0.0.1:6379',
    '--redis-prefix', `access-${process.pid}-${Date.now()}`,
    '--revocation-refresh', '300ms'
  ]
  const a = await scope.server({ databaseUrl, args })
  const b = await scope.server({ databaseUrl, args })
  const room = uniqueRoom('revoked')
  const alice = await mint({ room, sub: 'alice' })
  const bob = await mint({ room, sub: 'bob' })
  const aliceOnA = await scope.syncedClient(a, room, { params: { token: alice } })
  const aliceOnB = await scope.syncedClient(b, room, { params: { token: alice } })
  const bobOnB = await scope.syncedClient(b, room, { params: { token: bob } })

  const admin = await mint({ room: '**', role: 'admin' })
  const revoked = await fetch(`${a.httpUrl}/api/revocations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify({ sub: 'alice' })
  })
  const answer = await revoked.json()
  assert.equal(revoked.status, 201, JSON.stringify(answer))
  assert.equal(answer.closed, 1, 'node A closed its alice at once')

  await waitFor(() => closedWith(aliceOnA, 4403) && closedWith(aliceOnB, 4403), 10_000,
    () => `alice was not closed everywhere: A ${JSON.stringify(aliceOnA.closeEvents)}, B ${JSON.stringify(aliceOnB.closeEvents)}`)
  assert.ok(!closedWith(bobOnB, 4403), 'bob was closed too')
  bobOnB.text().insert(0, 'bob carries on')
  await waitFor(async () => (await roomText(a, room)) === 'bob carries on')

  const path = `${encodeURIComponent(room)}?token=${alice}`
  assert.equal(await upgradeStatus(a, path), 403)
  assert.equal(await upgradeStatus(b, path), 403)
  assert.equal(await upgradeStatus(b, `${encodeURIComponent(room)}?token=${bob}`), 101)

  await a.stop()
  const restarted = await scope.server({ databaseUrl, args })
  assert.equal(await upgradeStatus(restarted, path), 403, 'the revocation did not survive a restart')
  const listed = await fetch(`${restarted.httpUrl}/api/revocations`, {
    headers: { authorization: `Bearer ${admin}` }
  })
  assert.deepEqual((await listed.json()).map(r => [r.kind, r.value]), [['sub', 'alice']])
})
