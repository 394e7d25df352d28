// A gap never hides a document. One update whose earlier part never reached
// the server (a failed POST, a lost flush window, a client that sends only
// deltas) reaches a room that real y-websocket clients filled, through the
// WebSocket, through `POST …/update` or through `snapshot import`. The room
// unloads (compaction folds the update into a snapshot) and loads again:
// every client that joins gets everything complete, exports carry it, the
// missing part completes the room when it arrives, and a version holding
// the gap restores. On SQLite and on Postgres.

import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { test } from 'node:test'

import { Y, encodeUpdate, runCli, uniqueRoom, useScope, waitFor } from './harness.mjs'

/** A writer's two edits, one update each: the second builds on the first. */
function twoEdits () {
  const doc = new Y.Doc()
  doc.clientID = 777_777
  const updates = []
  doc.on('update', update => updates.push(update))
  doc.getText('text').insert(0, 'AB')
  doc.getText('text').insert(2, 'CD')
  return { first: updates[0], second: updates[1], client: doc.clientID }
}

async function api (server, room, suffix = '', init) {
  return fetch(`${server.httpUrl}/api/rooms/${encodeURIComponent(room)}${suffix}`, init)
}

async function roomText (server, room) {
  const response = await api(server, room, '/json')
  return response.ok ? (await response.json()).text : undefined
}

/** `crdt-hub snapshot …` against the server's database. */
async function snapshotCli (server, args, options) {
  return runCli(['snapshot', ...args, '--database-url', server.databaseUrl], options)
}

/** Sends `update` into `room` the way `channel` names. */
async function deliver (scope, server, room, update, channel, { complete = false } = {}) {
  if (channel === 'websocket') {
    const raw = scope.raw(server, encodeURIComponent(room))
    await raw.opened
    raw.send(encodeUpdate(update))
    await waitFor(async () => (await (await api(server, room)).json()).held.updates === 1,
      undefined, 'the gapped update was not held')
    raw.close()
  } else if (channel === 'post') {
    const response = await api(server, room, '/update', { method: 'POST', body: update })
    assert.equal(response.status, 200)
    assert.deepEqual(await response.json(), { applied: true, changed: true, complete })
  } else {
    const file = path.join(scope.tempDir(), 'incremental.ybin')
    fs.writeFileSync(file, update)
    const imported = await snapshotCli(server, ['import', room, file])
    assert.equal(imported.code, 0, imported.stderr)
  }
}

for (const backend of ['sqlite', 'postgres']) {
  for (const channel of ['websocket', 'post', 'import']) {
    test(`a gapped update through ${channel} never hides the room after reload (${backend})`, async t => {
      const scope = useScope(t)
      const databaseUrl = backend === 'postgres' ? await scope.postgresDatabase() : undefined
      const server = await scope.server({ databaseUrl, args: ['--room-idle-timeout', '300ms'] })
      const room = uniqueRoom(`gap-${channel}`)
      const { first, second, client } = twoEdits()

      const writer = await scope.syncedClient(server, room)
      writer.text().insert(0, 'hello world')
      await waitFor(async () => (await roomText(server, room)) === 'hello world')

      await deliver(scope, server, room, second, channel)
      assert.equal(writer.text().toString(), 'hello world', 'a live client saw something it cannot have')
      writer.destroy()
      await server.waitRoomUnloaded(room)

      // Reloaded from the snapshot the unload wrote, which holds the gap.
      const joiner = await scope.syncedClient(server, room)
      assert.equal(joiner.text().toString(), 'hello world', 'the reloaded room hid its content')
      const [gapped] = await (await api(server, room, '/snapshots')).json()

      const json = await snapshotCli(server, ['export', room, '--format', 'json'])
      assert.equal(json.code, 0, json.stderr)
      assert.equal(JSON.parse(json.stdout).text, 'hello world')
      const ybin = await snapshotCli(server, ['export', room, '--format', 'ybin'], { binary: true })
      assert.equal(ybin.code, 0, ybin.stderr)
      const exported = new Y.Doc()
      Y.applyUpdate(exported, ybin.stdout)
      assert.equal(exported.getText('text').toString(), 'hello world')
      Y.applyUpdate(exported, first)
      assert.match(exported.getText('text').toString(), /ABCD/, 'the export lost the waiting part')

      const check = await snapshotCli(server, ['check', room, '--json'])
      assert.equal(check.code, 0, check.stderr)
      const [report] = JSON.parse(check.stdout)
      assert.equal(report.loads, true)
      assert.equal(report.waiting.length, 1)
      assert.deepEqual(report.waiting[0].needs, [{ client, clock: 2 }], "it waits for the writer's first two items")

      // The missing part arrives: the room completes, live and after reload.
      await deliver(scope, server, room, first, 'post', { complete: true })
      await waitFor(() => /ABCD/.test(joiner.text().toString()), undefined,
        () => `the held part did not join: ${joiner.text().toString()}`)
      const complete = joiner.text().toString()
      assert.ok(complete.includes('hello world'), complete)

      // Back to the version that held the gap: its complete content.
      const restored = await api(server, room, '/restore', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ version: gapped.id })
      })
      assert.equal(restored.status, 200, await restored.text())
      await waitFor(() => joiner.text().toString() === 'hello world', undefined,
        () => `the restore did not reach the client: ${joiner.text().toString()}`)
      joiner.destroy()
      await server.waitRoomUnloaded(room, { times: 2 })
      const last = await scope.syncedClient(server, room)
      assert.equal(last.text().toString(), 'hello world')
    })
  }
}
