// Live restore with real Yjs clients: `crdt-hub snapshot restore --server`
// rolls a room back while two y-websocket clients stay connected. Both
// converge to exactly the version (formatted text, map, XML) without
// reloading, the restore can be undone, and nothing typed while it runs
// is lost.

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { SERVER_BIN, Y, canonical, delay, uniqueRoom, useScope, waitConverged, waitFor } from './harness.mjs'

const run = promisify(execFile)

/** Runs `crdt-hub snapshot ARGS` against the server's database; returns stdout. */
async function snapshotCli (server, args) {
  const { stdout } = await run(SERVER_BIN, [
    'snapshot', ...args,
    '--database-url', `sqlite://${server.dbPath}`,
    '--server', server.httpUrl
  ], { env: { ...process.env, RUST_LOG: 'warn' } })
  return stdout
}

/** Everything the test compares: text delta with formatting, map, XML. */
function content (doc) {
  return JSON.stringify(canonical({
    text: doc.getText('text').toDelta(),
    map: doc.getMap('map').toJSON(),
    xml: doc.getXmlFragment('xml').toJSON()
  }))
}

/** Writes a snapshot through the HTTP API; returns its id. */
async function snapshotNow (server, room) {
  const response = await fetch(`${server.httpUrl}/api/rooms/${encodeURIComponent(room)}/snapshot`, { method: 'POST' })
  assert.equal(response.status, 201)
  return (await response.json()).id
}

/** The "before" version id printed by `snapshot restore`. */
function beforeId (stdout) {
  const match = /before:\s+version (\d+)/.exec(stdout)
  assert.ok(match, `no before id in: ${stdout}`)
  return Number(match[1])
}

/** A first version written by `a`, snapshotted; then later edits by both. */
async function history (server, room, a, b) {
  const text = a.doc.getText('text')
  a.doc.transact(() => {
    text.insert(0, 'Hello restored world')
    text.format(0, 5, { bold: true })
    a.doc.getMap('map').set('status', 'draft')
    const p = new Y.XmlElement('paragraph')
    p.setAttribute('align', 'left')
    p.insert(0, [new Y.XmlText('first paragraph')])
    a.doc.getXmlFragment('xml').insert(0, [p])
  })
  await waitConverged([a, b])
  const version = content(a.doc)
  const v1 = await snapshotNow(server, room)

  b.doc.transact(() => {
    const t = b.doc.getText('text')
    t.delete(6, 9) // "restored "
    t.format(0, 5, { bold: null, italic: true })
    t.insert(t.length, ' (edited)', { color: 'red' })
    b.doc.getMap('map').set('status', 'final')
    b.doc.getMap('map').set('reviewer', 'b')
  })
  a.doc.transact(() => {
    const xml = a.doc.getXmlFragment('xml')
    xml.get(0).setAttribute('align', 'right')
    xml.insert(1, [new Y.XmlElement('hr')])
  })
  await waitConverged([a, b])
  return { v1, version, later: content(a.doc) }
}

test('a live restore reaches connected clients exactly, and can be undone', async t => {
  const scope = useScope(t)
  const server = await scope.server()
  const room = uniqueRoom('restore')
  const a = await scope.syncedClient(server, room, { version: 'v3' })
  const b = await scope.syncedClient(server, room, { version: 'v1' })
  const { v1, version, later } = await history(server, room, a, b)
  assert.notEqual(later, version)

  const out = await snapshotCli(server, ['restore', room, '--version', String(v1)])
  const before = beforeId(out)
  for (const client of [a, b]) {
    await waitFor(() => content(client.doc) === version, undefined,
      () => `${client.version} client did not reach the version:\n${content(client.doc)}\nwanted\n${version}`)
  }
  assert.equal(a.doc.getText('text').toString(), 'Hello restored world')
  assert.ok(a.connected && b.connected, 'a client reconnected')
  assert.ok(a.closeEvents.length === 0 && b.closeEvents.length === 0, 'a client was disconnected')

  const versions = JSON.parse(await snapshotCli(server, ['list', room, '--json']))
  assert.equal(versions[0].restored_from, v1)
  assert.equal(versions[1].id, before)

  // Undo: restore the state before the restore.
  await snapshotCli(server, ['restore', room, '--version', String(before)])
  for (const client of [a, b]) {
    await waitFor(() => content(client.doc) === later, undefined,
      () => `${client.version} client did not get the undone content back:\n${content(client.doc)}`)
  }
})

test('nothing typed during a restore is lost', async t => {
  const scope = useScope(t)
  const server = await scope.server()
  const room = uniqueRoom('restore-typing')
  const a = await scope.syncedClient(server, room, { version: 'v3' })
  const b = await scope.syncedClient(server, room, { version: 'v2' })
  const { v1 } = await history(server, room, a, b)

  // c is offline while the restore happens (its edit is concurrent with
  // the restore); b types continuously while the CLI runs.
  const c = await scope.syncedClient(server, room, { version: 'v3' })
  c.provider.disconnect()
  c.doc.getText('text').insert(0, 'OFFLINE ')

  const typed = []
  let typing = true
  const typist = (async () => {
    for (let i = 0; typing; i++) {
      const token = `<${i}>`
      const text = b.doc.getText('text')
      text.insert(text.length, token)
      typed.push(token)
      await delay(5)
    }
  })()
  const out = await snapshotCli(server, ['restore', room, '--version', String(v1)])
  await delay(100)
  typing = false
  await typist
  const before = beforeId(out)

  c.provider.connect()
  await waitConverged([a, b, c], { types: { text: 'Text', map: 'Map', xml: 'XmlFragment' }, timeoutMs: 20_000 })
  const final = a.doc.getText('text').toString()
  assert.ok(final.includes('OFFLINE '), `the offline edit was lost: ${final}`)

  // Every token b typed is in the final text, or it reached the room
  // before the restore started and is in the "before" version (which the
  // restore rolled back, and which can be restored).
  const beforeJson = JSON.parse(await snapshotCli(server, ['export', room, '--version', String(before), '--format', 'json']))
  const lost = typed.filter(token => !final.includes(token) && !beforeJson.text.includes(token))
  assert.deepEqual(lost, [], `typed during the restore and found nowhere: ${lost}`)
  assert.ok(typed.some(token => final.includes(token)), 'no token typed after the restore started survived')
  // Besides the typing, the content is the version's.
  const withoutTyping = final.replace('OFFLINE ', '').replace(/<\d+>/g, '')
  assert.equal(withoutTyping, 'Hello restored world')
})
