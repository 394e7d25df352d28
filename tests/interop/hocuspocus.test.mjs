// Tiptap's @hocuspocus/provider, the real npm package of majors 2, 3 and 4,
// against the real binary. A Hocuspocus socket opens `/` (no room in the
// path); every frame starts with a document name, and a document is the room
// of that name, shared with y-websocket clients at `/ROOM`. One socket (a
// HocuspocusProviderWebsocket) carries several documents; the token travels
// in an Auth message per document; the server acknowledges each update with
// a SyncStatus message, which the provider counts down in `unsyncedChanges`.
//
// What differs between the majors, and how this file bridges it:
// - v2 attaches a provider to its socket in the constructor and detaches it
//   with `disconnect()` / re-attaches with `connect()`; v3 and v4 need
//   `attach()` when given a `websocketProvider`, and `detach()` sends the
//   server a CLOSE message for the document.
// - v2 sends an Auth message only when it has a non-empty token; v3 and v4
//   always send one (an empty token when none is set), and v4 appends its
//   version string ("4.8.0") after the token.
// - v2's `authenticated` event carries nothing (the scope is in
//   `provider.authorizedScope`); v3 and v4 pass `{ scope }`.
// - v2's `unsyncedChanges` event passes the number, v3 and v4 `{ number }`;
//   v2's count is not held at 0 and goes below it after a reconnect.
// - v2's `disconnect()` sends no CLOSE (only `destroy()` does); it sends a
//   null awareness state instead.
// - v3's `destroy()` can leave a reconnect timer that reconnects forever:
//   HpSocket.destroy() disarms it.
// - v2 subscribes to a BroadcastChannel (which Node has) unless
//   `broadcast: false`: same-process providers would sync without the server.
// - v4 can address a document as `name\0sessionId` (`sessionAwareness`).
//
// Every provider's socket records the frames it sends and receives, so a
// failure shows what was said on the wire. INTEROP_HP_MAJORS=v2,v4 runs a
// subset of the majors.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import * as hp2 from 'hp2'
import * as hp3 from 'hp3'
import * as hp4 from 'hp4'

import {
  Y, WebSocket, canonical, decoding, delay, encoding, frame, runCli, startServer, syncProtocol,
  uniqueRoom, useScope, waitFor
} from './harness.mjs'

const MAJORS = { v2: hp2, v3: hp3, v4: hp4 }
const HP_VERSIONS = process.env.INTEROP_HP_MAJORS
  ? process.env.INTEROP_HP_MAJORS.split(',').map(v => v.trim()).filter(v => MAJORS[v])
  : Object.keys(MAJORS)

const SECRET = 'hocuspocus-secret-0123456789'
const OTHER_SECRET = 'not-the-servers-secret-0123456789'

// --------------------------------------------------------------------------
// The Hocuspocus protocol, as the providers speak it
// --------------------------------------------------------------------------

/** Message types: the varUint after the document name. */
const HP = {
  Sync: 0,
  Awareness: 1,
  Auth: 2,
  QueryAwareness: 3,
  Stateless: 5,
  BroadcastStateless: 6,
  CLOSE: 7,
  SyncStatus: 8,
  /** v4 only, connection level: a frame of this one byte, no document name. */
  Ping: 9,
  Pong: 10
}
const TYPE_NAMES = Object.fromEntries(Object.entries(HP).map(([k, v]) => [v, k]))
const SYNC_NAMES = ['Step1', 'Step2', 'Update']
const AUTH_NAMES = ['Token', 'PermissionDenied', 'Authenticated']

/** A frame: the document name, then whatever `write` adds. */
const hpFrame = (name, write) => frame(e => {
  encoding.writeVarString(e, name)
  write(e)
})
const hpAuth = (name, token) => hpFrame(name, e => {
  encoding.writeVarUint(e, HP.Auth)
  encoding.writeVarUint(e, 0)
  encoding.writeVarString(e, token)
})
const hpSyncStep1 = (name, doc) => hpFrame(name, e => {
  encoding.writeVarUint(e, HP.Sync)
  syncProtocol.writeSyncStep1(e, doc)
})
const hpUpdate = (name, update) => hpFrame(name, e => {
  encoding.writeVarUint(e, HP.Sync)
  syncProtocol.writeUpdate(e, update)
})

function toBytes (data) {
  if (typeof data === 'string') return new TextEncoder().encode(data)
  return new Uint8Array(Buffer.from(data))
}

const hex = bytes => Buffer.from(bytes).toString('hex')
const short = (s, n = 60) => (s.length > n ? s.slice(0, n) + '…' : s)

/**
 * Decodes one Hocuspocus frame: `{ name, type, sync?, auth?, text?,
 * status?, states?, trailing }`, or `{ error }` when it does not decode.
 */
function decodeHpFrame (bytes) {
  if (bytes.length === 1 && (bytes[0] === HP.Ping || bytes[0] === HP.Pong)) {
    return { name: null, type: bytes[0] }
  }
  const d = decoding.createDecoder(bytes)
  try {
    const name = decoding.readVarString(d)
    const type = decoding.readVarUint(d)
    const out = { name, type }
    switch (type) {
      case HP.Sync:
        out.sync = decoding.readVarUint(d)
        out.payload = decoding.readVarUint8Array(d)
        break
      case HP.Awareness:
        out.states = decodeAwareness(decoding.readVarUint8Array(d))
        break
      case HP.Auth:
        out.auth = decoding.readVarUint(d)
        if (decoding.hasContent(d)) out.text = decoding.readVarString(d)
        // v4's Auth/Token carries the provider's version after the token.
        if (out.auth === 0 && decoding.hasContent(d)) out.version = decoding.readVarString(d)
        break
      case HP.Stateless:
      case HP.CLOSE:
        if (decoding.hasContent(d)) out.text = decoding.readVarString(d)
        break
      case HP.SyncStatus:
        out.status = decoding.readVarInt(d)
        break
      default:
    }
    out.trailing = bytes.length - d.pos
    return out
  } catch (e) {
    return { error: String(e.message || e) }
  }
}

/** Map(clientID → state) of an awareness update; null states included. */
function decodeAwareness (update) {
  const d = decoding.createDecoder(update)
  const states = new Map()
  const count = decoding.readVarUint(d)
  for (let i = 0; i < count; i++) {
    const clientID = decoding.readVarUint(d)
    decoding.readVarUint(d) // clock
    states.set(clientID, JSON.parse(decoding.readVarString(d)))
  }
  return states
}

/** One line per frame, for failure messages. */
function describeHpFrame (bytes) {
  const f = decodeHpFrame(bytes)
  if (f.error) return `undecodable (${f.error}): ${short(hex(bytes), 80)}`
  if (f.name === null) return TYPE_NAMES[f.type]
  let what = TYPE_NAMES[f.type] ?? `unknown type ${f.type}`
  if (f.type === HP.Sync) what += `/${SYNC_NAMES[f.sync] ?? f.sync} ${f.payload.length}B`
  if (f.type === HP.Auth) {
    what += `/${AUTH_NAMES[f.auth] ?? f.auth}`
    if (f.text !== undefined) what += ` ${JSON.stringify(f.auth === 0 ? short(f.text, 16) : f.text)}`
    if (f.version !== undefined) what += ` version ${JSON.stringify(f.version)}`
  }
  if (f.type === HP.Awareness) what += ' ' + short(JSON.stringify([...f.states]), 120)
  if ((f.type === HP.CLOSE || f.type === HP.Stateless) && f.text !== undefined) what += ` ${JSON.stringify(f.text)}`
  if (f.type === HP.SyncStatus) what += ` ${f.status}`
  if (f.trailing) what += ` (+${f.trailing}B trailing)`
  return `${JSON.stringify(f.name)} ${what}`
}

// --------------------------------------------------------------------------
// Providers
// --------------------------------------------------------------------------

/**
 * One HocuspocusProviderWebsocket of the given major: one WebSocket to `/`,
 * shared by the providers made with `provider()`. Records every frame.
 */
class HpSocket {
  constructor (major, server, options = {}) {
    this.major = major
    this.server = server
    /** `{ dir: 'in' | 'out', bytes }` of every frame, all WebSockets. */
    this.log = []
    /** `{ code, reason }` of each underlying WebSocket's close. */
    this.closeEvents = []
    /** Errors the underlying WebSockets reported, as text. */
    this.errors = []
    /** How many WebSockets the provider opened (reconnects open more). */
    this.opened = 0
    this.clients = []
    this.destroyed = false
    const socket = this
    class RecordingWebSocket extends WebSocket {
      constructor (...args) {
        super(...args)
        socket.opened += 1
        this.on('message', data => socket.log.push({ dir: 'in', bytes: toBytes(data) }))
        this.on('close', (code, reason) => {
          socket.log.push({ dir: 'close', code, reason: String(reason) })
          socket.closeEvents.push({ code, reason: String(reason) })
        })
        // Destroying a provider while it reconnects closes a socket still
        // connecting; ws reports that as an 'error' event after the
        // provider has dropped its handlers, and an 'error' nobody listens
        // to throws out of the test. The close that follows is recorded.
        this.on('error', error => socket.errors.push(String(error)))
      }

      send (data, ...rest) {
        socket.log.push({ dir: 'out', bytes: toBytes(data) })
        return super.send(data, ...rest)
      }
    }
    const { HocuspocusProviderWebsocket } = MAJORS[major]
    this.ws = new HocuspocusProviderWebsocket({
      url: server.url,
      WebSocketPolyfill: RecordingWebSocket,
      // Reconnect fast and predictably: 100 ms, then up to 500 ms.
      delay: 100,
      initialDelay: 0,
      factor: 1.5,
      minDelay: 100,
      maxDelay: 500,
      jitter: false,
      ...options
    })
  }

  /** A provider of document `name` on this socket. */
  provider (name, options) {
    const client = new HpClient(this, name, options)
    this.clients.push(client)
    return client
  }

  get connected () { return this.ws.status === 'connected' }

  disconnect () { this.ws.disconnect() }
  connect () { this.ws.connect() }

  /** Decoded frames received for document `name` (or any, without it). */
  received (name) {
    return this.log
      .filter(entry => entry.dir === 'in')
      .map(entry => decodeHpFrame(entry.bytes))
      .filter(f => name === undefined || f.name === name)
  }

  /** The last `n` frames both ways, one line each. */
  transcript (n = 40) {
    const lines = this.log.slice(-n).map(entry => entry.dir === 'close'
      ? `   closed ${entry.code} ${JSON.stringify(entry.reason)}`
      : `${entry.dir === 'in' ? '<-' : '->'} ${describeHpFrame(entry.bytes)}`)
    const skipped = this.log.length > n ? `   (${this.log.length - n} earlier frames)\n` : ''
    return `${this.major} socket transcript (-> sent, <- received):\n${skipped}${lines.join('\n')}`
  }

  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    for (const client of this.clients) client.destroy()
    try { this.ws.destroy() } catch {}
    // v3's destroy() leaves the reconnect timer of a socket that has just
    // closed; when it fires, connect() sets shouldConnect again and retries
    // forever (v4 clears the timer). Nothing may reconnect once destroyed.
    this.ws.shouldConnect = false
    this.ws.connect = async () => {}
  }
}

/**
 * v2 sends an Auth message only when it has a token; without one it starts
 * with SyncStep1, which only its own test ('without --auth-secret') checks.
 * Elsewhere v2 gets this token, which a server without --auth-secret takes
 * like v3's and v4's empty one, so that each of v2's failures has one cause.
 */
const V2_TOKEN_WITHOUT_AUTH = 'unused-without-auth-secret'

/** One HocuspocusProvider (one document on an HpSocket) and its Y.Doc. */
class HpClient {
  constructor (socket, name, { token, doc = new Y.Doc(), ...options } = {}) {
    if (token === undefined) token = socket.major === 'v2' ? V2_TOKEN_WITHOUT_AUTH : null
    this.socket = socket
    this.major = socket.major
    this.name = name
    this.doc = doc
    this.clientID = doc.clientID
    /** Scopes the server announced (v2: read from `authorizedScope`). */
    this.authenticated = []
    /** Reasons the server gave for refusing the token. */
    this.authFailures = []
    /** `state` of every `synced` event. */
    this.syncedEvents = []
    /** Every value `unsyncedChanges` took, in order. */
    this.unsyncedEvents = []
    this.destroyed = false
    const { HocuspocusProvider } = MAJORS[this.major]
    const provider = this.provider = new HocuspocusProvider({
      websocketProvider: socket.ws,
      name,
      document: doc,
      token,
      ...(this.major === 'v2' ? { broadcast: false } : {}),
      ...options
    })
    provider.on('authenticated', data => this.authenticated.push(data?.scope ?? provider.authorizedScope))
    provider.on('authenticationFailed', data => this.authFailures.push(data?.reason))
    provider.on('synced', data => this.syncedEvents.push(data?.state))
    provider.on('unsyncedChanges', data => this.unsyncedEvents.push(typeof data === 'number' ? data : data?.number))
    if (this.major !== 'v2') provider.attach()
  }

  get synced () { return this.provider.isSynced }
  get unsynced () { return this.provider.unsyncedChanges }
  get awareness () { return this.provider.awareness }
  text (name = 'text') { return this.doc.getText(name) }
  map (name = 'map') { return this.doc.getMap(name) }

  /** The address of this provider's frames (v4 with sessionAwareness: `name\0sessionId`). */
  get address () { return this.provider.effectiveName ?? this.name }

  describe () {
    return `${this.major} provider of ${JSON.stringify(this.name)}: synced=${this.synced} ` +
      `unsyncedChanges=${this.unsynced} authenticated=${JSON.stringify(this.authenticated)} ` +
      `authFailures=${JSON.stringify(this.authFailures)} text=${JSON.stringify(this.text().toString())}\n` +
      this.socket.transcript()
  }

  async waitSynced (timeoutMs) {
    await waitFor(() => this.synced, timeoutMs, () => `never synced: ${this.describe()}`)
  }

  /** Waits until the server has acknowledged every update sent so far. */
  async waitAcknowledged (timeoutMs) {
    // `<= 0`: v2 does not stop at 0. On reconnect it resets the count to 1
    // (for its SyncStep1) and then sends the updates queued while offline,
    // which were counted before the reset, so their acks take it below 0.
    await waitFor(() => this.synced && this.unsynced <= 0, timeoutMs,
      () => `unsyncedChanges never reached 0 (values so far ${JSON.stringify(this.unsyncedEvents)}): ${this.describe()}`)
  }

  /**
   * A round trip on this document: sends SyncStep1 and waits for the
   * server's SyncStep2. Frames of one socket are handled in order, so
   * afterwards the server has handled everything this provider sent before.
   */
  async roundTrip (timeoutMs) {
    const step2s = () => this.socket.received(this.address).filter(f => f.type === HP.Sync && f.sync === 1).length
    const before = step2s()
    this.provider.forceSync()
    await waitFor(() => step2s() > before, timeoutMs, () => `no SyncStep2 answered a SyncStep1: ${this.describe()}`)
  }

  /** Stops sending for this document, keeping the socket (v3, v4: CLOSE). */
  detach () {
    if (this.major === 'v2') this.provider.disconnect()
    else this.provider.detach()
  }

  /** Opens the document again on the same socket. */
  attach () {
    if (this.major === 'v2') this.provider.connect()
    else this.provider.attach()
  }

  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    try { this.provider.destroy() } catch {}
    try { this.doc.destroy() } catch {}
  }
}

/** A socket of `major`, torn down with the scope. */
function hpSocket (scope, server, major, options) {
  return scope.adopt(new HpSocket(major, server, options))
}

/** A provider of `name` on a socket of its own. */
function hpClient (scope, server, major, name, options) {
  return hpSocket(scope, server, major).provider(name, options)
}

/** A y-websocket client (at `/ROOM`) that has synced; with a token when given. */
function reader (scope, server, room, token) {
  return scope.syncedClient(server, room, token ? { params: { token } } : {})
}

const stateOf = (awareness, clientID) => awareness.getStates().get(clientID)

async function mint ({ room, role = 'write', secret = SECRET }) {
  const { code, stdout, stderr } = await runCli(['token', '--auth-secret', secret, '--room', room, '--role', role])
  assert.equal(code, 0, stderr)
  return stdout.trim()
}

let server
let authServer
before(async () => {
  server = await startServer()
  authServer = await startServer({ args: ['--auth-secret', SECRET] })
})
after(async () => {
  await server?.dispose()
  await authServer?.dispose()
})

// --------------------------------------------------------------------------
// 1. Two providers on one document
// --------------------------------------------------------------------------

describe('two Hocuspocus providers on one document sync both ways', () => {
  for (const major of HP_VERSIONS) {
    test(`@hocuspocus/provider ${major}`, async t => {
      const scope = useScope(t)
      const name = uniqueRoom(`hp-two-${major}`)
      const a = hpClient(scope, server, major, name)
      const b = hpClient(scope, server, major, name)
      await a.waitSynced()
      await b.waitSynced()
      assert.ok(a.syncedEvents.includes(true) && b.syncedEvents.includes(true), 'no `synced` event')

      a.text().insert(0, 'Hello')
      await waitFor(() => b.text().toString() === 'Hello', undefined, () => b.describe())
      b.text().insert(5, ' world')
      await waitFor(() => a.text().toString() === 'Hello world', undefined, () => a.describe())

      // Tiptap keeps its content in a Y.XmlFragment.
      const paragraph = new Y.XmlElement('paragraph')
      paragraph.insert(0, [new Y.XmlText('from b')])
      b.doc.getXmlFragment('default').insert(0, [paragraph])
      await waitFor(() => a.doc.getXmlFragment('default').toString() === '<paragraph>from b</paragraph>',
        undefined, () => `a's fragment: ${a.doc.getXmlFragment('default').toString()}\n${a.describe()}`)

      a.text().delete(0, 6)
      await waitFor(() => b.text().toString() === 'world', undefined, () => b.describe())
      await a.waitAcknowledged()
      await b.waitAcknowledged()
      assert.deepEqual(a.socket.closeEvents, [], 'the server closed a well-behaved provider')
      assert.deepEqual(b.socket.closeEvents, [], 'the server closed a well-behaved provider')
      assert.equal(a.socket.opened, 1, 'the provider had to reconnect')
    })
  }

  test('providers of every major and y-websocket in one document', async t => {
    const scope = useScope(t)
    const name = uniqueRoom('hp-all-majors')
    const clients = HP_VERSIONS.map(major => hpClient(scope, server, major, name))
    for (const c of clients) await c.waitSynced()
    const yws = await reader(scope, server, name)
    for (const c of clients) c.map().set(c.major, c.clientID)
    yws.map().set('y-websocket', yws.doc.clientID)
    const expected = JSON.stringify(canonical(Object.fromEntries([
      ...clients.map(c => [c.major, c.clientID]), ['y-websocket', yws.doc.clientID]
    ])))
    for (const doc of [...clients.map(c => c.doc), yws.doc]) {
      await waitFor(() => JSON.stringify(canonical(doc.getMap('map').toJSON())) === expected,
        undefined, () => `map ${JSON.stringify(doc.getMap('map').toJSON())}, want ${expected}\n` +
          clients.map(c => c.describe()).join('\n'))
    }
  })
})

describe('without --auth-secret', () => {
  for (const major of HP_VERSIONS) {
    if (major === 'v2') {
      test('v2 with no token sends no Auth message and still syncs', async t => {
        const scope = useScope(t)
        const c = hpClient(scope, server, major, uniqueRoom('hp-noauth-v2'), { token: null })
        await c.waitSynced()
        const sentAuth = c.socket.log.filter(e => e.dir === 'out' && decodeHpFrame(e.bytes).type === HP.Auth)
        assert.equal(sentAuth.length, 0, 'v2 sent an Auth message after all')
      })
    } else {
      test(`${major}'s Auth message with an empty token is answered with Authenticated "read-write"`, async t => {
        const scope = useScope(t)
        const c = hpClient(scope, server, major, uniqueRoom(`hp-noauth-${major}`))
        await c.waitSynced()
        await waitFor(() => c.authenticated.length > 0 || c.authFailures.length > 0, undefined, () => c.describe())
        assert.deepEqual(c.authFailures, [], c.describe())
        assert.deepEqual(c.authenticated, ['read-write'], c.describe())
      })
    }
  }
})

// --------------------------------------------------------------------------
// 2. Hocuspocus and y-websocket in one room
// --------------------------------------------------------------------------

describe('a Hocuspocus provider and a y-websocket client share a room: edits and awareness', () => {
  for (const major of HP_VERSIONS) {
    test(`@hocuspocus/provider ${major} ↔ y-websocket`, async t => {
      const scope = useScope(t)
      const room = uniqueRoom(`hp-yws-${major}`)
      const yws = await reader(scope, server, room)
      yws.awareness.setLocalStateField('user', { name: 'y-websocket' })
      yws.text().insert(0, 'from y-websocket. ')

      const hp = hpClient(scope, server, major, room)
      await hp.waitSynced()
      await waitFor(() => hp.text().toString() === 'from y-websocket. ', undefined, () => hp.describe())
      // Presence set before the provider joined reaches it.
      await waitFor(() => stateOf(hp.awareness, yws.doc.clientID)?.user?.name === 'y-websocket', undefined,
        () => `the provider does not see the y-websocket client's presence: ${JSON.stringify([...hp.awareness.getStates()])}\n${hp.describe()}`)

      hp.provider.setAwarenessField('user', { name: `hocuspocus ${major}` })
      await waitFor(() => stateOf(yws.awareness, hp.clientID)?.user?.name === `hocuspocus ${major}`, undefined,
        () => `y-websocket does not see the provider's presence: ${JSON.stringify([...yws.awareness.getStates()])}\n${hp.describe()}`)

      hp.text().insert(hp.text().length, 'from hocuspocus.')
      await waitFor(() => yws.text().toString() === 'from y-websocket. from hocuspocus.', undefined,
        () => `y-websocket has ${JSON.stringify(yws.text().toString())}\n${hp.describe()}`)
      yws.text().insert(0, '> ')
      await waitFor(() => hp.text().toString() === '> from y-websocket. from hocuspocus.', undefined, () => hp.describe())

      yws.awareness.setLocalStateField('cursor', 7)
      await waitFor(() => stateOf(hp.awareness, yws.doc.clientID)?.cursor === 7, undefined, () => hp.describe())

      // Everyone moving at once: the moves arrive merged into few awareness
      // messages (--awareness-window), which the provider applies entry by
      // entry, ending with each client's last move.
      const others = [yws, await reader(scope, server, room), await reader(scope, server, room)]
      for (let move = 1; move <= 20; move++) {
        for (const other of others) other.awareness.setLocalStateField('cursor', move)
        hp.provider.setAwarenessField('cursor', move)
        await new Promise(resolve => setTimeout(resolve, 2))
      }
      await waitFor(() => others.every(o => stateOf(hp.awareness, o.doc.clientID)?.cursor === 20 &&
        stateOf(o.awareness, hp.clientID)?.cursor === 20), undefined,
      () => `last moves: the provider sees ${JSON.stringify(others.map(o => stateOf(hp.awareness, o.doc.clientID)?.cursor))}, ` +
        `they see ${JSON.stringify(others.map(o => stateOf(o.awareness, hp.clientID)?.cursor))}\n${hp.describe()}`)

      // Leaving: y-websocket sees the provider's presence go.
      hp.destroy()
      await waitFor(() => !yws.awareness.getStates().has(hp.clientID), undefined,
        () => `the destroyed provider's presence stayed: ${JSON.stringify([...yws.awareness.getStates()])}\n${hp.socket.transcript()}`)
      assert.deepEqual(yws.closeEvents, [])
    })
  }
})

// --------------------------------------------------------------------------
// 3. Several documents on one socket
// --------------------------------------------------------------------------

describe('two documents over one socket', () => {
  for (const major of HP_VERSIONS) {
    test(`@hocuspocus/provider ${major}`, async t => {
      const scope = useScope(t)
      const roomA = uniqueRoom(`hp-mux-a-${major}`)
      const roomB = uniqueRoom(`hp-mux-b-${major}`)
      const socket = hpSocket(scope, server, major)
      const a = socket.provider(roomA)
      const b = socket.provider(roomB)
      await a.waitSynced()
      await b.waitSynced()
      const readerA = await reader(scope, server, roomA)
      const readerB = await reader(scope, server, roomB)

      a.text().insert(0, 'only in A')
      b.text().insert(0, 'only in B')
      await waitFor(() => readerA.text().toString() === 'only in A' && readerB.text().toString() === 'only in B',
        undefined, () => `room A has ${JSON.stringify(readerA.text().toString())}, room B ${JSON.stringify(readerB.text().toString())}\n${socket.transcript()}`)
      readerA.text().insert(0, 'A2 ')
      readerB.text().insert(0, 'B2 ')
      await waitFor(() => a.text().toString() === 'A2 only in A' && b.text().toString() === 'B2 only in B',
        undefined, () => `${a.describe()}\n${b.describe()}`)

      // Presence is per document too.
      a.provider.setAwarenessField('doc', 'A')
      b.provider.setAwarenessField('doc', 'B')
      await waitFor(() => stateOf(readerA.awareness, a.clientID)?.doc === 'A' && stateOf(readerB.awareness, b.clientID)?.doc === 'B',
        undefined, () => socket.transcript())
      assert.ok(!readerA.awareness.getStates().has(b.clientID), "B's presence showed in room A")
      assert.ok(!readerB.awareness.getStates().has(a.clientID), "A's presence showed in room B")

      // Detach A: its presence leaves room A (v3, v4: on the CLOSE message
      // alone), B carries on, and room A goes on without it.
      a.detach()
      await waitFor(() => !readerA.awareness.getStates().has(a.clientID), undefined,
        () => `room A still shows the detached provider: ${JSON.stringify([...readerA.awareness.getStates()])}\n${socket.transcript()}`)
      readerA.text().insert(0, 'while A was away. ')
      b.text().insert(b.text().length, ' +b')
      await waitFor(() => readerB.text().toString() === 'B2 only in B +b', undefined, () => socket.transcript())
      readerB.text().insert(0, '<')
      await waitFor(() => b.text().toString() === '<B2 only in B +b', undefined, () => b.describe())

      // A comes back on the same socket and catches up.
      a.attach()
      await waitFor(() => a.text().toString() === 'while A was away. A2 only in A', undefined, () => a.describe())
      a.text().insert(0, 'back. ')
      await waitFor(() => readerA.text().toString() === 'back. while A was away. A2 only in A', undefined, () => a.describe())

      // Destroy A: B still works both ways.
      a.destroy()
      b.text().insert(b.text().length, ' after A left')
      await waitFor(() => readerB.text().toString() === '<B2 only in B +b after A left', undefined, () => socket.transcript())
      readerB.text().insert(0, '!')
      await waitFor(() => b.text().toString() === '!<B2 only in B +b after A left', undefined, () => b.describe())
      await waitFor(() => !readerA.awareness.getStates().has(a.clientID), undefined, () => socket.transcript())

      // Edits never crossed between the documents.
      assert.equal(readerA.text().toString(), 'back. while A was away. A2 only in A')
      assert.equal(readerB.text().toString(), '!<B2 only in B +b after A left')
      assert.equal(socket.opened, 1, `the two documents did not share one WebSocket:\n${socket.transcript()}`)
      assert.deepEqual(socket.closeEvents, [], socket.transcript())
    })
  }
})

// --------------------------------------------------------------------------
// 4. Authentication: the token in the Auth message
// --------------------------------------------------------------------------

/** Waits until `client` was told Authenticated or PermissionDenied. */
async function waitAuthAnswer (client) {
  await waitFor(() => client.authenticated.length + client.authFailures.length > 0, undefined,
    () => `no Authenticated or PermissionDenied: ${client.describe()}`)
}

/** A room that already holds `text`, written by a y-websocket client with a write token. */
async function roomWithContent (scope, room, text) {
  const writer = await reader(scope, authServer, room, await mint({ room }))
  writer.text().insert(0, text)
  const check = await reader(scope, authServer, room, await mint({ room, role: 'read' }))
  await waitFor(() => check.text().toString() === text, undefined, `the y-websocket writer's edit did not reach room ${room}`)
  check.destroy()
  return writer
}

/**
 * Asserts that the server sent `client`'s socket no content and no presence
 * for `client`'s document.
 */
function assertNothingSentFor (client) {
  const leaked = client.socket.received(client.address).filter(f => f.type === HP.Sync || f.type === HP.Awareness)
  assert.deepEqual(leaked.map(f => `${TYPE_NAMES[f.type]}${f.sync !== undefined ? '/' + SYNC_NAMES[f.sync] : ''}`), [],
    `the server sent a refused document's content or presence:\n${client.describe()}`)
}

describe('authentication with the Auth message', () => {
  for (const major of HP_VERSIONS) {
    describe(`@hocuspocus/provider ${major}`, () => {
      test('a valid token is answered with Authenticated "read-write", and the provider syncs', async t => {
        const scope = useScope(t)
        const room = uniqueRoom(`hp-auth-ok-${major}`)
        await roomWithContent(scope, room, 'already here. ')
        const c = hpClient(scope, authServer, major, room, { token: await mint({ room }) })
        await waitAuthAnswer(c)
        assert.deepEqual(c.authFailures, [], c.describe())
        // v2's event has no scope; v3 and v4 pass it (both recorded here).
        assert.deepEqual(c.authenticated, ['read-write'], c.describe())
        assert.equal(c.provider.authorizedScope, 'read-write')
        await c.waitSynced()
        await waitFor(() => c.text().toString() === 'already here. ', undefined, () => c.describe())
        c.text().insert(c.text().length, 'authorised edit')
        const r = await reader(scope, authServer, room, await mint({ room, role: 'read' }))
        await waitFor(() => r.text().toString() === 'already here. authorised edit', undefined,
          () => `room has ${JSON.stringify(r.text().toString())}\n${c.describe()}`)
        await c.waitAcknowledged()
        assert.deepEqual(c.socket.closeEvents, [], c.socket.transcript())
      })

      const refusals = [
        ['a token signed with another secret', room => mint({ room, secret: OTHER_SECRET })],
        ['a token for another room', room => mint({ room: `${room}-other` })],
        ['a string that is no JWT', () => 'not-a-jwt']
      ]
      // v2 sends no Auth message at all for an empty token (see test 7).
      if (major !== 'v2') refusals.push(['an empty token (no token configured)', () => null])
      for (const [what, makeToken] of refusals) {
        test(`${what} gets authenticationFailed with a reason and never any content`, async t => {
          const scope = useScope(t)
          const room = uniqueRoom(`hp-auth-bad-${major}`)
          await roomWithContent(scope, room, 'secret content')
          const socket = hpSocket(scope, authServer, major)
          const refused = socket.provider(room, { token: await makeToken(room) })
          await waitAuthAnswer(refused)
          assert.deepEqual(refused.authenticated, [], refused.describe())
          assert.equal(refused.authFailures.length, 1, refused.describe())
          const [reason] = refused.authFailures
          assert.ok(typeof reason === 'string' && reason.length > 0, `reason ${JSON.stringify(reason)}`)

          // A valid provider on the same socket, opened after: once it has
          // synced, the server has handled what the refused one sent.
          const otherRoom = uniqueRoom(`hp-auth-barrier-${major}`)
          const valid = socket.provider(otherRoom, { token: await mint({ room: otherRoom }) })
          await valid.waitSynced()
          await valid.roundTrip()
          assert.equal(refused.synced, false, refused.describe())
          assert.equal(refused.text().toString(), '', refused.describe())
          assertNothingSentFor(refused)
          assert.deepEqual(socket.closeEvents, [], `the refusal closed the socket:\n${socket.transcript()}`)
        })
      }

      test('a read-only token is told "readonly"; the provider reads, and its edits never reach the room', async t => {
        const scope = useScope(t)
        const room = uniqueRoom(`hp-auth-ro-${major}`)
        const writer = await roomWithContent(scope, room, 'original')
        const ro = hpClient(scope, authServer, major, room, { token: await mint({ room, role: 'read' }) })
        await waitAuthAnswer(ro)
        assert.deepEqual(ro.authFailures, [], ro.describe())
        assert.deepEqual(ro.authenticated, ['readonly'], ro.describe())
        assert.equal(ro.provider.authorizedScope, 'readonly')
        await ro.waitSynced()
        await waitFor(() => ro.text().toString() === 'original', undefined, () => ro.describe())
        writer.text().insert(writer.text().length, ' + writer')
        await waitFor(() => ro.text().toString() === 'original + writer', undefined, () => ro.describe())

        const mark = ro.socket.log.length
        ro.text().insert(ro.text().length, ' READ-ONLY EDIT')
        ro.map().set('read-only', true)
        // Two round trips on this document: the server has handled the
        // edits, and the SyncStep2 (holding them too) that the provider
        // answered the server's SyncStep1 with, if it sent one.
        await ro.roundTrip()
        await ro.roundTrip()
        const fresh = await reader(scope, authServer, room, await mint({ room, role: 'read' }))
        assert.equal(fresh.text().toString(), 'original + writer', `a read-only edit reached the room:\n${ro.describe()}`)
        assert.deepEqual(fresh.map().toJSON(), {})
        assert.ok(!writer.text().toString().includes('READ-ONLY'), writer.text().toString())
        // SyncStatus 1 for an edit the server dropped would tell the editor
        // its work was saved (Hocuspocus answers such updates with 0).
        const acks = ro.socket.log.slice(mark)
          .filter(e => e.dir === 'in').map(e => decodeHpFrame(e.bytes))
          .filter(f => f.name === room && f.type === HP.SyncStatus)
        assert.deepEqual(acks.filter(f => f.status === 1), [],
          `the server acknowledged read-only edits it dropped:\n${ro.describe()}`)
        // Still reading after the refused edits.
        writer.text().insert(0, '# ')
        await waitFor(() => ro.text().toString() === '# original + writer READ-ONLY EDIT', undefined, () => ro.describe())
      })

      test('a refused document leaves a valid one on the same socket alone', async t => {
        const scope = useScope(t)
        const roomGood = uniqueRoom(`hp-auth-good-${major}`)
        const roomBad = uniqueRoom(`hp-auth-bad-${major}`)
        const roomRo = uniqueRoom(`hp-auth-ro-${major}`)
        await roomWithContent(scope, roomBad, 'secret content')
        const roWriter = await roomWithContent(scope, roomRo, 'to read')
        const socket = hpSocket(scope, authServer, major)
        const refused = socket.provider(roomBad, { token: await mint({ room: roomBad, secret: OTHER_SECRET }) })
        const good = socket.provider(roomGood, { token: await mint({ room: roomGood }) })
        const ro = socket.provider(roomRo, { token: await mint({ room: roomRo, role: 'read' }) })
        await waitAuthAnswer(refused)
        await good.waitSynced()
        await ro.waitSynced()
        assert.equal(refused.authFailures.length, 1, refused.describe())
        assert.deepEqual(good.authenticated, ['read-write'], good.describe())
        assert.deepEqual(ro.authenticated, ['readonly'], ro.describe())

        const goodReader = await reader(scope, authServer, roomGood, await mint({ room: roomGood }))
        good.text().insert(0, 'good edit')
        await waitFor(() => goodReader.text().toString() === 'good edit', undefined, () => good.describe())
        // v3 and v4 keep a refused provider attached: its edits still go
        // out, addressed to the refused document (v2 detached it).
        refused.text().insert(0, 'intruder ')
        ro.text().insert(ro.text().length, ' [read-only edit]')
        good.text().insert(good.text().length, ', and after the refusal')
        await waitFor(() => goodReader.text().toString() === 'good edit, and after the refusal', undefined, () => good.describe())
        goodReader.text().insert(0, '> ')
        await waitFor(() => good.text().toString() === '> good edit, and after the refusal', undefined, () => good.describe())
        roWriter.text().insert(0, 'still ')
        await waitFor(() => ro.text().toString() === 'still to read [read-only edit]', undefined, () => ro.describe())
        await good.roundTrip()

        const badRoom = await reader(scope, authServer, roomBad, await mint({ room: roomBad, role: 'read' }))
        assert.equal(badRoom.text().toString(), 'secret content', `the refused provider's edit reached its room:\n${socket.transcript()}`)
        const roRoom = await reader(scope, authServer, roomRo, await mint({ room: roomRo, role: 'read' }))
        assert.equal(roRoom.text().toString(), 'still to read', `the read-only edit reached its room:\n${socket.transcript()}`)
        assert.equal(refused.text().toString(), 'intruder ', refused.describe())
        assertNothingSentFor(refused)
        assert.equal(socket.opened, 1, socket.transcript())
        assert.deepEqual(socket.closeEvents, [], socket.transcript())
      })
    })
  }
})

// --------------------------------------------------------------------------
// 5. SyncStatus means stored
// --------------------------------------------------------------------------

describe('an acknowledged update survives kill -9', () => {
  for (const major of HP_VERSIONS) {
    test(`@hocuspocus/provider ${major}`, async t => {
      const scope = useScope(t)
      const dir = scope.tempDir()
      // Updates wait up to 2 s for their batch: an ack sent before the
      // write would be followed by a kill that loses the update.
      const args = ['--flush-interval', '2s']
      const first = await scope.server({ dir, args })
      const room = uniqueRoom(`hp-durable-${major}`)
      const c = hpClient(scope, first, major, room)
      await c.waitSynced()
      await c.waitAcknowledged()

      let editing = false
      let killedAfterMs = null
      const editedAt = Date.now()
      c.provider.on('unsyncedChanges', () => {
        if (editing && killedAfterMs === null && c.unsynced <= 0) {
          first.kill() // SIGKILL is sent right here, before any await
          killedAfterMs = Date.now() - editedAt
        }
      })
      editing = true
      c.text().insert(0, 'acknowledged, so stored')
      c.map().set('second update', 2)
      await waitFor(() => killedAfterMs !== null, 15_000,
        () => `the two updates were not both acknowledged (values ${JSON.stringify(c.unsyncedEvents)}): ${c.describe()}`)
      const exit = await first.exited
      assert.equal(exit.signal, 'SIGKILL', `the server exited on its own before the kill: ${JSON.stringify(exit)}\n${first.logTail()}`)
      c.socket.destroy()

      const second = await scope.server({ dir, args })
      const r = await reader(scope, second, room)
      assert.equal(r.text().toString(), 'acknowledged, so stored',
        `an update acknowledged ${killedAfterMs} ms after the edit was lost by kill -9; log before the kill:\n${first.logTail()}`)
      assert.deepEqual(r.map().toJSON(), { 'second update': 2 })
      const again = hpClient(scope, second, major, room)
      await again.waitSynced()
      await waitFor(() => again.text().toString() === 'acknowledged, so stored', undefined, () => again.describe())
    })
  }
})

// With several nodes, SyncStatus covers what the provider thinks it covers:
// everything the document holds of its own. Its edit reached the other
// node over Redis and its own node died before storing it; moved to the
// other node, the provider has nothing to send (that node has the edit
// already) and is acknowledged at once, so `unsyncedChanges` reaches 0 with
// the edit in memory only. The node stores what it holds only from the bus
// before it acknowledges (server/src/room/owner/bus_only.rs), so a kill -9
// of that node too loses nothing.
describe('an acknowledged update survives kill -9 after moving to another node', () => {
  for (const major of HP_VERSIONS) {
    test(`@hocuspocus/provider ${major}`, async t => {
      const scope = useScope(t)
      const databaseUrl = await scope.postgresDatabase()
      const room = uniqueRoom(`hp-moved-${major}`)
      const flags = ['--redis-url', 'redis://127.0.0.1:6379', '--redis-prefix', room,
        '--cluster-sync-interval', '1s', '--snapshot-interval', '1h']
      // Its updates wait 2 s for their batch: killed before they are stored.
      const dying = await scope.server({ databaseUrl, args: [...flags, '--flush-interval', '2s'] })
      const survivor = await scope.server({ databaseUrl, args: flags })
      const watcher = await reader(scope, survivor, room)
      const c = hpClient(scope, dying, major, room)
      await c.waitSynced()
      await c.waitAcknowledged()
      // Both nodes hold the room and know it, so the first one publishes.
      await delay(1500)
      c.text().insert(0, 'only in memory')
      await waitFor(() => watcher.doc.getText('text').toString() === 'only in memory', 5000,
        () => `the edit did not reach the other node: ${c.describe()}`)
      await dying.kill()
      // The same document moves; the dead socket's teardown must not
      // destroy it.
      const doc = c.doc
      c.doc = new Y.Doc()
      c.socket.destroy()
      const moved = hpClient(scope, survivor, major, room, { doc })
      await moved.waitSynced()
      await moved.waitAcknowledged()

      await survivor.kill()
      const restarted = await scope.server({ databaseUrl, args: flags })
      const r = await reader(scope, restarted, room)
      assert.equal(r.doc.getText('text').toString(), 'only in memory',
        'the provider was told everything was stored (unsyncedChanges 0), but the edit is gone')
    })
  }
})

// --------------------------------------------------------------------------
// 6. Offline edits
// --------------------------------------------------------------------------

describe('offline edits reach the others on reconnect', () => {
  for (const major of HP_VERSIONS) {
    test(`@hocuspocus/provider ${major}: the socket disconnects and connects again`, async t => {
      const scope = useScope(t)
      const room = uniqueRoom(`hp-offline-${major}`)
      const a = hpClient(scope, server, major, room)
      const b = hpClient(scope, server, major, room)
      await a.waitSynced()
      await b.waitSynced()
      a.text().insert(0, 'base.')
      await waitFor(() => b.text().toString() === 'base.', undefined, () => b.describe())

      a.socket.disconnect()
      await waitFor(() => !a.socket.connected && !a.synced, undefined, () => `a did not disconnect: ${a.describe()}`)
      a.text().insert(a.text().length, ' offline-A.')
      a.map().set('a', 'offline')
      b.text().insert(0, 'online-B. ')
      b.map().set('b', 'online')
      await b.waitAcknowledged()
      assert.equal(a.text().toString(), 'base. offline-A.')

      a.socket.connect()
      await a.waitSynced()
      const want = 'online-B. base. offline-A.'
      await waitFor(() => a.text().toString() === want && b.text().toString() === want, undefined,
        () => `a ${JSON.stringify(a.text().toString())}, b ${JSON.stringify(b.text().toString())}\n${a.describe()}`)
      assert.deepEqual(b.map().toJSON(), { a: 'offline', b: 'online' })
      await a.waitAcknowledged()
      const r = await reader(scope, server, room)
      assert.equal(r.text().toString(), want)
    })

    test(`@hocuspocus/provider ${major}: the server restarts on the same port`, async t => {
      const scope = useScope(t)
      const dir = scope.tempDir()
      const first = await scope.server({ dir })
      const room = uniqueRoom(`hp-restart-${major}`)
      const hp = hpClient(scope, first, major, room)
      const yws = await reader(scope, first, room)
      await hp.waitSynced()
      hp.text().insert(0, 'base.')
      await waitFor(() => yws.text().toString() === 'base.', undefined, () => hp.describe())
      await hp.waitAcknowledged()

      await first.stop()
      await waitFor(() => !hp.socket.connected && !hp.synced, undefined, () => `no disconnect seen: ${hp.describe()}`)
      hp.text().insert(hp.text().length, ' hp-offline.')
      yws.text().insert(0, 'yws-offline. ')

      await scope.server({ dir, bind: first.addr })
      const want = 'yws-offline. base. hp-offline.'
      await waitFor(() => hp.text().toString() === want && yws.text().toString() === want, 15_000,
        () => `hp ${JSON.stringify(hp.text().toString())}, y-websocket ${JSON.stringify(yws.text().toString())}\n${hp.describe()}`)
      assert.ok(hp.socket.opened >= 2)
      await hp.waitAcknowledged()
    })
  }
})

// --------------------------------------------------------------------------
// 7. Malformed and unauthorised frames (raw sockets)
// --------------------------------------------------------------------------

/** A Y update inserting `text` into the root Y.Text "text". */
function textUpdate (text) {
  const doc = new Y.Doc()
  doc.getText('text').insert(0, text)
  const update = Y.encodeStateAsUpdate(doc)
  doc.destroy()
  return update
}

/** The raw socket's frames, described, for failure messages. */
const rawTranscript = socket => socket.frames.map(f => `<- ${describeHpFrame(f.data)}`).join('\n') || '(no frames)'

/** Waits until the raw socket received a frame matching `match` (decoded). */
async function rawReceived (socket, match, what) {
  return waitFor(() => socket.frames.map(f => decodeHpFrame(f.data)).find(match), undefined,
    () => `${what}; received:\n${rawTranscript(socket)}`)
}

/** Clear answers to a frame that does not parse or means nothing (1002 expected). */
const PROTOCOL_ERROR = [1002, 1003, 1007, 1008]
/** Clear answers to a message for a document without a token (4401 expected). */
const NOT_AUTHENTICATED = [4401, 4403, 1008]
/**
 * The server may wait a while for a token that could still come (it closes
 * after 10 s); no provider sends a Sync message before its Auth message.
 */
const TOKEN_WAIT_MS = 15_000

/**
 * Waits for the server to close `socket` with one of `codes` (never 1000,
 * nor 1005/1006: no code, no close frame).
 */
async function assertClosedWith (socket, codes, what, timeoutMs) {
  const { code, reason } = await socket.waitClosed(timeoutMs).catch(e => {
    throw new Error(`${what}: ${e.message}; the socket is ${socket.isOpen ? 'still open' : 'not open'}; received:\n${rawTranscript(socket)}`)
  })
  assert.ok(codes.includes(code),
    `${what}: closed with ${code} ${JSON.stringify(reason)}, want one of ${codes.join(', ')}; received:\n${rawTranscript(socket)}`)
  return { code, reason }
}

describe('malformed and unauthorised Hocuspocus frames', () => {
  test('a document name longer than the frame', async t => {
    const scope = useScope(t)
    const control = uniqueRoom('hp-raw-control')
    const room = uniqueRoom('hp-raw-trunc')
    const socket = scope.raw(server, '')
    await socket.opened
    // Control: a well-formed update on the same socket is applied.
    socket.send(hpAuth(control, ''))
    await rawReceived(socket, f => f.name === control && f.type === HP.Auth && f.auth === 2,
      'no Authenticated answered an empty token without --auth-secret')
    socket.send(hpUpdate(control, textUpdate('well-formed')))
    const controlReader = await reader(scope, server, control)
    await waitFor(() => controlReader.text().toString() === 'well-formed', undefined,
      () => `the well-formed update was not applied; received:\n${rawTranscript(socket)}`)

    socket.send(frame(e => {
      encoding.writeVarUint(e, 1000) // the name is said to be 1000 bytes long
      encoding.writeUint8Array(e, new TextEncoder().encode(room))
      encoding.writeVarUint(e, HP.Sync)
      syncProtocol.writeUpdate(e, textUpdate('must not land'))
    }))
    await assertClosedWith(socket, PROTOCOL_ERROR, 'a truncated document name')
    const r = await reader(scope, server, room)
    assert.equal(r.text().toString(), '')
  })

  test('an unknown message type is ignored, as Hocuspocus does, and never reaches the room', async t => {
    const scope = useScope(t)
    const room = uniqueRoom('hp-raw-unknown')
    const socket = scope.raw(server, '')
    await socket.opened
    const doc = new Y.Doc()
    t.after(() => doc.destroy())
    socket.send(hpAuth(room, ''))
    socket.send(hpSyncStep1(room, doc))
    await rawReceived(socket, f => f.name === room && f.type === HP.Sync && f.sync === 1,
      'no SyncStep2 answered a SyncStep1 without --auth-secret')

    // Type 42 with a real update as its payload: a server that took it for
    // a Sync message would apply it.
    socket.send(hpFrame(room, e => {
      encoding.writeVarUint(e, 42)
      encoding.writeVarUint(e, syncProtocol.messageYjsUpdate)
      encoding.writeVarUint8Array(e, textUpdate('must not land'))
    }))
    // Providers may send types newer than the server (Hocuspocus ignores
    // them), so the socket stays open: a later update on it still lands,
    // and the unknown message's payload never did.
    socket.send(hpUpdate(room, textUpdate('control')))
    const r = await reader(scope, server, room)
    await waitFor(() => r.text().toString() === 'control', undefined,
      () => `the update after the unknown type was not applied: ${JSON.stringify(r.text().toString())}; received:\n${rawTranscript(socket)}`)
    assert.ok(socket.isOpen, `the socket was closed; received:\n${rawTranscript(socket)}`)
  })

  test('a Sync message before any Auth, with --auth-secret', async t => {
    const scope = useScope(t)
    const room = uniqueRoom('hp-raw-noauth')
    const socket = scope.raw(authServer, '')
    await socket.opened
    socket.send(hpUpdate(room, textUpdate('must not land')))
    await assertClosedWith(socket, NOT_AUTHENTICATED, 'a Sync message without Auth', TOKEN_WAIT_MS)
    const r = await reader(scope, authServer, room, await mint({ room, role: 'read' }))
    assert.equal(r.text().toString(), '')
    assert.deepEqual(socket.frames.map(f => decodeHpFrame(f.data)).filter(f => f.type === HP.Sync), [],
      rawTranscript(socket))
  })

  test('a Sync message for a document the socket never authenticated, beside one it did', async t => {
    const scope = useScope(t)
    const authed = uniqueRoom('hp-raw-authed')
    const room = uniqueRoom('hp-raw-other')
    await roomWithContent(scope, room, 'secret content')
    const socket = scope.raw(authServer, '')
    await socket.opened
    socket.send(hpAuth(authed, await mint({ room: authed })))
    await rawReceived(socket, f => f.name === authed && f.type === HP.Auth && f.auth === 2,
      'no Authenticated answered a valid token')
    // Control: the authenticated document takes an update.
    socket.send(hpUpdate(authed, textUpdate('authenticated update')))
    const authedReader = await reader(scope, authServer, authed, await mint({ room: authed, role: 'read' }))
    await waitFor(() => authedReader.text().toString() === 'authenticated update', undefined,
      () => `the authenticated document did not take the update; received:\n${rawTranscript(socket)}`)

    const doc = new Y.Doc()
    t.after(() => doc.destroy())
    socket.send(hpSyncStep1(room, doc))
    socket.send(hpUpdate(room, textUpdate('must not land')))
    await assertClosedWith(socket, NOT_AUTHENTICATED, 'a Sync message for an unauthenticated document', TOKEN_WAIT_MS)
    const leaked = socket.frames.map(f => decodeHpFrame(f.data)).filter(f => f.name === room && (f.type === HP.Sync || f.type === HP.Awareness))
    assert.deepEqual(leaked, [], `the unauthenticated document's content was sent:\n${rawTranscript(socket)}`)
    const r = await reader(scope, authServer, room, await mint({ room, role: 'read' }))
    assert.equal(r.text().toString(), 'secret content')
  })
})

// --------------------------------------------------------------------------
// v4: session-aware addresses (`name\0sessionId`)
// --------------------------------------------------------------------------

describe('v4 sessionAwareness: two providers of one document on one socket', () => {
  test('each is answered at its own address, and they sync through the room', async t => {
    if (!HP_VERSIONS.includes('v4')) return t.skip('v4 not selected')
    const scope = useScope(t)
    const room = uniqueRoom('hp-session')
    const socket = hpSocket(scope, server, 'v4')
    const a = socket.provider(room, { sessionAwareness: true })
    const b = socket.provider(room, { sessionAwareness: true })
    assert.equal(a.address, `${room}\0${a.provider.sessionId}`)
    await a.waitSynced()
    await b.waitSynced()
    const r = await reader(scope, server, room)
    a.text().insert(0, 'from a')
    await waitFor(() => b.text().toString() === 'from a' && r.text().toString() === 'from a', undefined, () => b.describe())
    b.text().insert(0, 'b and ')
    await waitFor(() => a.text().toString() === 'b and from a' && r.text().toString() === 'b and from a', undefined, () => a.describe())
    assert.ok(socket.received(a.address).length > 0 && socket.received(b.address).length > 0, socket.transcript())
    assert.deepEqual(socket.received(room), [], `frames addressed to the bare name:\n${socket.transcript()}`)
    await a.waitAcknowledged()
    await b.waitAcknowledged()
  })
})
