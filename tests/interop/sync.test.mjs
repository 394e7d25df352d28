// Document sync through the server with every y-websocket major version:
// two clients, mixed versions, late joiners and offline edits.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import {
  VERSIONS, snapshot, startServer, uniqueRoom, useScope, waitConverged, waitFor
} from './harness.mjs'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.dispose() })

describe('two clients sync a Y.Text', () => {
  for (const version of VERSIONS) {
    test(`y-websocket ${version} ↔ ${version}`, async t => {
      const scope = useScope(t)
      const room = uniqueRoom(`two-${version}`)
      const a = await scope.syncedClient(server, room, { version })
      const b = await scope.syncedClient(server, room, { version })

      a.text().insert(0, 'Hello')
      await waitFor(() => b.text().toString() === 'Hello', undefined,
        () => `b has ${JSON.stringify(b.text().toString())}`)

      b.text().insert(5, ' world')
      await waitFor(() => a.text().toString() === 'Hello world', undefined,
        () => `a has ${JSON.stringify(a.text().toString())}`)

      a.text().delete(0, 6)
      await waitFor(() => b.text().toString() === 'world', undefined,
        () => `b has ${JSON.stringify(b.text().toString())}`)
      await waitConverged([a, b])
      assert.equal(a.text().toString(), 'world')
      assert.deepEqual(a.closeEvents, [], 'the server must not close a well-behaved client')
    })
  }

  test('mixed versions 1.x, 2.x and 3.x in one room', async t => {
    const scope = useScope(t)
    const room = uniqueRoom('mixed')
    const clients = []
    for (const version of VERSIONS) clients.push(await scope.syncedClient(server, room, { version }))

    clients.forEach((c, i) => {
      c.text().insert(c.text().length, `[${c.version}]`)
      c.map().set(c.version, i)
    })
    await waitConverged(clients)
    for (const c of clients) {
      const text = c.text().toString()
      for (const version of VERSIONS) {
        assert.ok(text.includes(`[${version}]`), `${c.version} client misses the ${version} edit: ${text}`)
      }
      assert.deepEqual(c.map().toJSON(), { v1: 0, v2: 1, v3: 2 })
    }

    // Every ordered pair of versions: an edit by one reaches the others.
    for (const from of clients) {
      const marker = `<from ${from.version}>`
      from.text().insert(0, marker)
      await waitFor(() => clients.every(c => c.text().toString().includes(marker)), undefined,
        () => `${marker} did not reach all: ${clients.map(c => c.version + '=' + c.text()).join(' | ')}`)
    }
    await waitConverged(clients)
  })
})

test('a late joiner of each version receives the full state in its first sync', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('late')
  const a = await scope.syncedClient(server, room, { version: 'v3' })
  const b = await scope.syncedClient(server, room, { version: 'v1' })
  a.text().insert(0, 'written before the late joiners came')
  a.map().set('answer', 42)
  b.map().set('nested', { list: [1, 2, 3] })
  b.array().push(['x', 'y'])
  a.array().insert(0, [{ k: 'v' }])
  b.text().format(0, 7, { bold: true })
  a.text().delete(0, 8)
  await waitConverged([a, b])
  const expected = snapshot(a.doc)

  for (const version of VERSIONS) {
    const late = await scope.syncedClient(server, room, { version })
    // 'synced' fires on the server's SyncStep2: it must already hold
    // everything, not trickle in afterwards.
    assert.equal(snapshot(late.doc), expected, `${version} late joiner got an incomplete first sync`)
    assert.equal(late.text().toString(), 'before the late joiners came')
    assert.deepEqual(late.map().toJSON(), { answer: 42, nested: { list: [1, 2, 3] } })
    // Concurrent inserts at one position are ordered by client id: compare
    // as a multiset.
    assert.deepEqual(late.array().toJSON().map(v => JSON.stringify(v)).sort(), ['"x"', '"y"', '{"k":"v"}'])
  }
})

describe('offline edits merge on reconnect', () => {
  for (const version of VERSIONS) {
    test(`y-websocket ${version}`, async t => {
      const scope = useScope(t)
      const room = uniqueRoom(`offline-${version}`)
      const a = await scope.syncedClient(server, room, { version })
      const b = await scope.syncedClient(server, room, { version })
      a.text().insert(0, 'base.')
      await waitConverged([a, b])

      a.provider.disconnect()
      await waitFor(() => !a.connected && a.provider.ws === null, undefined, 'a did not disconnect')

      a.text().insert(a.text().length, ' offline-A.')
      a.map().set('a', 'offline')
      b.text().insert(0, 'online-B. ')
      b.map().set('b', 'online')
      b.array().push(['from b'])
      // b's edits cannot reach the disconnected a.
      assert.equal(a.text().toString(), 'base. offline-A.')

      a.provider.connect()
      await waitConverged([a, b])
      const text = a.text().toString()
      assert.equal(text, 'online-B. base. offline-A.')
      assert.deepEqual(a.map().toJSON(), { a: 'offline', b: 'online' })
      assert.deepEqual(b.array().toJSON(), ['from b'])

      // The server itself holds the merge, not only the two clients.
      const c = await scope.syncedClient(server, room, { version: 'v3' })
      assert.equal(snapshot(c.doc), snapshot(a.doc))
    })
  }

  test('both sides offline at once, then reconnect', async t => {
    const scope = useScope(t)
    const room = uniqueRoom('offline-both')
    const a = await scope.syncedClient(server, room, { version: 'v2' })
    const b = await scope.syncedClient(server, room, { version: 'v3' })
    a.provider.disconnect()
    b.provider.disconnect()
    await waitFor(() => !a.connected && !b.connected, undefined, 'clients did not disconnect')
    a.text().insert(0, 'AAA')
    b.text().insert(0, 'BBB')
    a.array().push([1])
    b.array().push([2])
    b.provider.connect()
    await b.waitSynced()
    a.provider.connect()
    await waitConverged([a, b])
    const text = a.text().toString()
    assert.ok(text === 'AAABBB' || text === 'BBBAAA', `unexpected merge: ${text}`)
    assert.deepEqual([...a.array().toJSON()].sort(), [1, 2])
  })
})
