// Many clients editing at once: random concurrent edits on every shared
// type, and a join storm on a cold room.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import {
  VERSIONS, delay, prng, snapshot, startServer, uniqueRoom, useScope, waitConverged, waitFor
} from './harness.mjs'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.dispose() })

/** One random edit of `client`'s Y.Text, Y.Map or Y.Array. */
function randomEdit (rng, client) {
  const text = client.text()
  const map = client.map()
  const array = client.array()
  switch (rng.int(7)) {
    case 0:
    case 1:
      text.insert(rng.int(text.length + 1), rng.word())
      break
    case 2:
      if (text.length > 0) {
        const at = rng.int(text.length)
        text.delete(at, 1 + rng.int(Math.min(4, text.length - at)))
      }
      break
    case 3:
      map.set(`k${rng.int(8)}`, rng.pick([rng.word(), rng.int(1000), { nested: rng.word() }, [rng.int(9)], null, true]))
      break
    case 4:
      map.delete(`k${rng.int(8)}`)
      break
    case 5:
      array.insert(rng.int(array.length + 1), [rng.pick([rng.word(), rng.int(1000), { at: client.doc.clientID }])])
      break
    case 6:
      if (array.length > 0) array.delete(rng.int(array.length), 1)
      break
  }
}

test('6 clients converge after concurrent random edits on Y.Text, Y.Map and Y.Array', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('random')
  const rng = prng(0xC0FFEE)
  const clients = []
  for (let i = 0; i < 6; i++) {
    clients.push(await scope.syncedClient(server, room, { version: VERSIONS[i % VERSIONS.length] }))
  }

  let edits = 0
  for (let round = 0; round < 25; round++) {
    // Every client edits without waiting for the others' updates, so edits
    // of one round are concurrent; a short pause lets some of them cross.
    for (const client of clients) {
      for (let n = 1 + rng.int(4); n > 0; n--) {
        // Some edits are grouped in one transaction (one update message).
        if (rng.int(4) === 0) {
          client.doc.transact(() => { randomEdit(rng, client); randomEdit(rng, client) })
          edits += 2
        } else {
          randomEdit(rng, client)
          edits += 1
        }
      }
    }
    await delay(rng.int(3) * 5)
  }
  assert.ok(edits > 200, `only ${edits} edits were made`)

  await waitConverged(clients, { timeoutMs: 20_000 })
  const final = clients[0]
  assert.ok(final.text().length > 0, 'random edits left an empty text; the test is too weak')
  assert.ok(final.array().length > 0 && Object.keys(final.map().toJSON()).length > 0,
    'random edits left an empty map or array; the test is too weak')
  for (const c of clients) assert.deepEqual(c.closeEvents, [], `${c.version} client was disconnected`)

  // The server's copy matches too.
  const late = await scope.syncedClient(server, room)
  assert.equal(snapshot(late.doc), snapshot(final.doc))
})

test('40 clients joining a cold room at the same instant all converge; every insert appears exactly once', async t => {
  const scope = useScope(t)
  const room = uniqueRoom('storm')
  const count = 40
  const marker = i => `<${String(i).padStart(2, '0')}>`
  const clients = []
  // All providers open their sockets in the same tick, on a room that has
  // never been loaded.
  for (let i = 0; i < count; i++) {
    const client = scope.client(server, room, { version: VERSIONS[i % VERSIONS.length] })
    clients.push(client)
    if (i % 2 === 0) {
      // Edited before the socket opened: reaches the server in the
      // client's SyncStep2 answer to the server's SyncStep1.
      client.text().insert(0, marker(i))
    } else {
      // Edited right after the first sync: reaches the server as an update.
      client.provider.once('synced', () => client.text().insert(0, marker(i)))
    }
  }

  const expectedLength = clients.reduce((n, _, i) => n + marker(i).length, 0)
  // Equal state vectors alone could be reached before the late inserts
  // were made: wait for the full length too.
  await waitFor(() => clients.every(c => c.text().length === expectedLength), 30_000,
    () => `lengths ${clients.map(c => c.text().length).join(',')}, expected ${expectedLength}`)
  await waitConverged(clients, { types: { text: 'Text' } })
  const text = clients[0].text().toString()
  for (let i = 0; i < count; i++) {
    const occurrences = text.split(marker(i)).length - 1
    assert.equal(occurrences, 1, `${marker(i)} appears ${occurrences} times in ${text}`)
  }
  assert.equal(text.length, expectedLength, `unexpected content: ${text}`)
  for (const c of clients) assert.deepEqual(c.closeEvents, [], `a ${c.version} client was disconnected`)

  const late = await scope.syncedClient(server, room)
  assert.equal(late.text().toString(), text)
  // The log line may reach us after the sockets' data: wait for it.
  await waitFor(() => server.roomLoads(room) >= 1, undefined, 'no "room loaded" log line')
  assert.equal(server.roomLoads(room), 1, 'the cold room must be loaded exactly once')
})
