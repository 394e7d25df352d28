// Test harness for the crdt-hub interop suite: runs the real server binary,
// connects real y-websocket clients (1.x, 2.x, 3.x) and raw `ws` sockets to
// it, and makes sure every process and provider is cleaned up even when an
// assertion fails, so that `node --test` always exits.

import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import { WebsocketProvider as WebsocketProviderV3 } from 'y-websocket'
import { WebsocketProvider as WebsocketProviderV2 } from 'y-websocket-v2'
import { WebsocketProvider as WebsocketProviderV1 } from 'y-websocket-v1'

const here = path.dirname(fileURLToPath(import.meta.url))

/** The server binary: `CRDT_HUB_BIN`, or the debug build of the workspace. */
export const SERVER_BIN = process.env.CRDT_HUB_BIN
  ? path.resolve(process.env.CRDT_HUB_BIN)
  : path.resolve(here, '../../target/debug/crdt-hub')

/** Generous on a loaded 2-core machine; polling makes success fast anyway. */
export const DEFAULT_TIMEOUT_MS = 10_000
const START_TIMEOUT_MS = 20_000
/** SIGTERM waits for the close handshakes and the saves; then SIGKILL. */
const STOP_TIMEOUT_MS = 15_000

// Every provider registers a process 'exit' listener (y-websocket does so
// in node); 40+ providers in one file would print a leak warning.
process.setMaxListeners(0)

// --------------------------------------------------------------------------
// Polling
// --------------------------------------------------------------------------

/**
 * Polls `predicate` (sync or async) until it returns a truthy value, which
 * is returned. Throws after `timeoutMs`, with `describe()` (if given) in the
 * message so a failure shows the state that did not converge.
 *
 * @template T
 * @param {() => T | Promise<T>} predicate
 * @param {number} [timeoutMs]
 * @param {string | (() => string)} [describe]
 * @returns {Promise<T>}
 */
export async function waitFor (predicate, timeoutMs = DEFAULT_TIMEOUT_MS, describe = '') {
  const deadline = Date.now() + timeoutMs
  let lastError = null
  for (;;) {
    try {
      const value = await predicate()
      if (value) return value
      lastError = null
    } catch (e) {
      lastError = e
    }
    if (Date.now() >= deadline) {
      const what = typeof describe === 'function' ? describe() : describe
      const cause = lastError ? ` (last error: ${lastError.stack || lastError})` : ''
      throw new Error(`waitFor timed out after ${timeoutMs} ms${what ? ': ' + what : ''}${cause}`)
    }
    await delay(15)
  }
}

/** Resolves after `ms`. Only for pacing and polling, never as an assertion. */
export function delay (ms) {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** Rejects with `message` if `promise` does not settle within `ms`. */
export async function withTimeout (promise, ms, message) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${message}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

// --------------------------------------------------------------------------
// Deterministic randomness
// --------------------------------------------------------------------------

/** mulberry32: a tiny seeded PRNG, so "random" tests replay exactly. */
export function prng (seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    next,
    /** Integer in [0, n). */
    int: n => Math.floor(next() * n),
    pick: array => array[Math.floor(next() * array.length)],
    bytes: n => Uint8Array.from({ length: n }, () => Math.floor(next() * 256)),
    word: () => Array.from({ length: 1 + Math.floor(next() * 5) }, () => 'abcdefghij'[Math.floor(next() * 10)]).join('')
  }
}

export function escapeRegExp (s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

let roomCounter = 0
/** A room name no other test of this process uses. */
export function uniqueRoom (prefix = 'room') {
  roomCounter += 1
  return `${prefix}-${process.pid}-${roomCounter}-${Math.random().toString(36).slice(2, 8)}`
}

// --------------------------------------------------------------------------
// The server process
// --------------------------------------------------------------------------

const liveServers = new Set()
// Last resort if the test process dies without running its hooks: never
// leave a server behind.
process.on('exit', () => {
  for (const server of liveServers) {
    try { server.process.kill('SIGKILL') } catch {}
  }
})

export class Server {
  constructor ({ process: child, exited, addr, dir, dbPath, databaseUrl, args, log }) {
    this.process = child
    this.addr = addr
    this.url = `ws://${addr}`
    this.httpUrl = `http://${addr}`
    this.dir = dir
    this.dbPath = dbPath
    /** What `--database-url` the server was started with. */
    this.databaseUrl = databaseUrl
    this.args = args
    /** Every stderr line so far (plain-text tracing output). */
    this.log = log
    /** Resolves with `{ code, signal }` when the process has exited. */
    this.exited = exited
  }

  /** The last `n` log lines, for failure messages. */
  logTail (n = 30) {
    return this.log.slice(-n).join('\n')
  }

  /** How many log lines match every one of `patterns` (strings or regexes). */
  countLogLines (...patterns) {
    return this.log.filter(line => patterns.every(p => typeof p === 'string' ? line.includes(p) : p.test(line))).length
  }

  /**
   * Waits until the server logged that `room` was saved and unloaded from
   * memory (a debug line; the harness sets RUST_LOG so it is printed).
   */
  async waitRoomUnloaded (room, { times = 1, timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    await waitFor(() => this.roomEvents(room, 'room unloaded') >= times, timeoutMs,
      () => `room ${room} was not unloaded ${times} time(s); server log:\n${this.logTail()}`)
  }

  /** How many times `room` was loaded (from storage) so far. */
  roomLoads (room) {
    return this.roomEvents(room, 'room loaded')
  }

  /**
   * How many log lines carry `message` for `room`, whether the room is named
   * by the line's span (`room{room=NAME}:`) or by a field (`room=NAME`).
   */
  roomEvents (room, message) {
    const names = new RegExp(`[{\\s]room="?${escapeRegExp(room)}"?(?=[\\s},:]|$)`)
    return this.countLogLines(message, names)
  }

  /**
   * SIGTERM, then SIGKILL if the server has not exited within `timeoutMs`.
   * Returns `{ code, signal, killed }`; `killed` says SIGKILL was needed.
   */
  async stop ({ timeoutMs = STOP_TIMEOUT_MS } = {}) {
    const child = this.process
    if (child.exitCode !== null || child.signalCode !== null) {
      liveServers.delete(this)
      return { ...(await this.exited), killed: false }
    }
    child.kill('SIGTERM')
    let killed = false
    const timer = setTimeout(() => {
      killed = true
      child.kill('SIGKILL')
    }, timeoutMs)
    try {
      const result = await this.exited
      return { ...result, killed }
    } finally {
      clearTimeout(timer)
      liveServers.delete(this)
    }
  }

  /**
   * SIGKILL at once, like a crash or a power cut: no close frames, no last
   * save. The signal is sent before this returns its promise, so a caller
   * may fire it from an event handler without awaiting. Resolves with
   * `{ code, signal }`.
   */
  kill () {
    const child = this.process
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    return this.exited.finally(() => liveServers.delete(this))
  }

  /** Stops the server and removes its temp dir (unless it was reused). */
  async dispose () {
    await this.stop()
    if (this.ownsDir && !process.env.INTEROP_KEEP_TMP) {
      fs.rmSync(this.dir, { recursive: true, force: true })
    }
  }
}

/**
 * Starts `crdt-hub serve` on a free port with its own SQLite file and waits
 * for its `listening` line.
 *
 * @param {object} [options]
 * @param {string[]} [options.args] extra flags, e.g. ['--room-idle-timeout', '500ms']
 * @param {string} [options.dir] reuse this directory (and its database) instead of a fresh one
 * @param {string} [options.databaseUrl] a database instead of the SQLite file in `dir`
 * @param {string} [options.bind] listen here instead of a free port, e.g. a
 *   stopped server's `addr` so that its clients reconnect to the new one
 * @param {Record<string,string>} [options.env]
 * @returns {Promise<Server>}
 */
export async function startServer ({ args = [], dir, databaseUrl, bind = '127.0.0.1:0', env = {} } = {}) {
  if (!fs.existsSync(SERVER_BIN)) {
    throw new Error(`server binary not found at ${SERVER_BIN}: run \`cargo build -p crdt-hub\` or set CRDT_HUB_BIN`)
  }
  const ownsDir = !dir
  dir = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'crdt-hub-interop-'))
  const dbPath = path.join(dir, 'hub.db')
  databaseUrl = databaseUrl ?? `sqlite://${dbPath}`
  const fullArgs = ['serve', '--bind', bind, '--database-url', databaseUrl, ...args]
  const child = spawn(SERVER_BIN, fullArgs, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      ...process.env,
      // Room loads and unloads are logged at debug; tests wait for them.
      RUST_LOG: `${process.env.RUST_LOG || 'info'},crdt_hub::room=debug`,
      NO_COLOR: '1',
      // Tests send refused frames and reconnect at once from 127.0.0.1:
      // the server's wait after a refused update is off unless a test
      // asks for it.
      CRDT_HUB_REFUSAL_MAX_DELAY: '0s',
      ...env
    }
  })
  const log = []
  let addrResolve
  const addrFound = new Promise(resolve => { addrResolve = resolve })
  let pending = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', chunk => {
    pending += chunk
    const lines = pending.split('\n')
    pending = lines.pop()
    for (const raw of lines) {
      // Strip ANSI colours in case the server colours anyway.
      const line = raw.replace(/\x1b\[[0-9;]*m/g, '')
      log.push(line)
      if (process.env.INTEROP_SERVER_LOG) process.stderr.write(`[server ${child.pid}] ${line}\n`)
      const match = line.includes('listening') && /addr=(\S+:\d+)/.exec(line)
      if (match) addrResolve(match[1])
    }
  })
  const exited = once(child, 'exit').then(([code, signal]) => ({ code, signal }))
  const exitedEarly = exited.then(({ code, signal }) => {
    throw new Error(`server exited before listening (code ${code}, signal ${signal}):\n${log.join('\n')}`)
  })
  const spawnFailed = once(child, 'error').then(([e]) => { throw e })
  const placeholder = { process: child }
  liveServers.add(placeholder)
  let addr
  try {
    addr = await withTimeout(Promise.race([addrFound, exitedEarly, spawnFailed]), START_TIMEOUT_MS,
      `server did not log its listening address:\n${log.join('\n')}`)
  } catch (e) {
    child.kill('SIGKILL')
    liveServers.delete(placeholder)
    if (ownsDir) fs.rmSync(dir, { recursive: true, force: true })
    throw e
  } finally {
    exitedEarly.catch(() => {})
    spawnFailed.catch(() => {})
  }
  liveServers.delete(placeholder)
  const server = new Server({ process: child, exited, addr, dir, dbPath, databaseUrl, args: fullArgs, log })
  server.ownsDir = ownsDir
  liveServers.add(server)
  return server
}

// --------------------------------------------------------------------------
// y-websocket clients
// --------------------------------------------------------------------------

/** The WebsocketProvider class of each y-websocket major version. */
export const PROVIDERS = {
  v1: WebsocketProviderV1,
  v2: WebsocketProviderV2,
  v3: WebsocketProviderV3
}
export const VERSIONS = Object.keys(PROVIDERS)

/** One Y.Doc synced through one WebsocketProvider. */
export class Client {
  constructor ({ server, room, version, doc, provider }) {
    this.server = server
    this.room = room
    this.version = version
    this.doc = doc
    this.provider = provider
    /** Close events of the provider's sockets: `{ code, reason }`. */
    this.closeEvents = []
    this.destroyed = false
    provider.on('connection-close', event => {
      this.closeEvents.push({ code: event?.code, reason: String(event?.reason ?? '') })
    })
  }

  get synced () { return this.provider.synced }
  get connected () { return this.provider.wsconnected }
  get awareness () { return this.provider.awareness }
  text (name = 'text') { return this.doc.getText(name) }
  map (name = 'map') { return this.doc.getMap(name) }
  array (name = 'array') { return this.doc.getArray(name) }

  /** Waits for the provider's first SyncStep2 from the server. */
  async waitSynced (timeoutMs = DEFAULT_TIMEOUT_MS) {
    await waitFor(() => this.provider.synced, timeoutMs, `${this.version} client never synced with room ${this.room}`)
  }

  /**
   * Kills the socket without a close frame (like a crashed browser) and
   * stops the provider from reconnecting.
   */
  terminateAbruptly () {
    this.provider.shouldConnect = false
    const ws = this.provider.ws
    if (ws) ws.terminate()
  }

  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    try { this.provider.destroy() } catch {}
    // Destroying the doc also destroys the provider's Awareness, whose
    // interval timer would otherwise keep the process alive.
    try { this.doc.destroy() } catch {}
  }
}

/**
 * Owns what one test creates and tears it all down in `t.after`, so a
 * failing assertion never leaves sockets or servers behind.
 */
export class Scope {
  constructor () {
    this.clients = []
    this.sockets = []
    this.servers = []
    this.cleanups = []
  }

  /**
   * A WebsocketProvider of the given major version on a fresh Y.Doc.
   * BroadcastChannel is disabled: same-process providers would otherwise
   * sync with each other without the server.
   */
  client (server, room, { version = 'v3', doc = new Y.Doc(), connect = true, ...options } = {}) {
    const Provider = PROVIDERS[version]
    if (!Provider) throw new Error(`unknown y-websocket version ${version}`)
    const provider = new Provider(server.url, room, doc, {
      WebSocketPolyfill: WebSocket,
      disableBc: true,
      connect,
      maxBackoffTime: 300,
      ...options
    })
    const client = new Client({ server, room, version, doc, provider })
    this.clients.push(client)
    return client
  }

  /** A client that has finished its initial sync. */
  async syncedClient (server, room, options) {
    const client = this.client(server, room, options)
    await client.waitSynced()
    return client
  }

  /** A raw `ws` socket to `/${encodedPath}` (already percent-encoded). */
  raw (server, encodedPath, options) {
    const socket = new RawSocket(`${server.url}/${encodedPath}`, options)
    this.sockets.push(socket)
    return socket
  }

  async server (options) {
    const server = await startServer(options)
    this.servers.push(server)
    return server
  }

  defer (fn) { this.cleanups.push(fn) }

  /**
   * Tears `thing` down (its `destroy()`, which must not throw) with the
   * clients, before the servers stop: for providers this harness does not
   * make itself, such as Hocuspocus ones.
   */
  adopt (thing) {
    this.clients.push(thing)
    return thing
  }

  /**
   * A fresh, empty Postgres database (dropped when the scope closes), from
   * `CRDT_HUB_TEST_POSTGRES_URL` or the local server with trust auth.
   * Returns its URL.
   */
  async postgresDatabase () {
    const admin = process.env.CRDT_HUB_TEST_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432/postgres'
    const name = `crdt_hub_interop_${process.pid}_${Math.random().toString(36).slice(2, 10)}`
    await psql(admin, `CREATE DATABASE ${name}`)
    this.defer(() => psql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`))
    const url = new URL(admin)
    url.pathname = `/${name}`
    return url.toString()
  }

  /** A temp dir removed when the scope closes (after its servers stopped). */
  tempDir () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crdt-hub-interop-'))
    if (!process.env.INTEROP_KEEP_TMP) this.defer(() => fs.rmSync(dir, { recursive: true, force: true }))
    return dir
  }

  async close () {
    for (const client of this.clients) client.destroy()
    for (const socket of this.sockets) socket.terminate()
    const errors = []
    await Promise.all(this.servers.map(s => s.dispose().catch(e => errors.push(e))))
    for (const fn of this.cleanups.reverse()) {
      try { await fn() } catch (e) { errors.push(e) }
    }
    if (errors.length) throw errors[0]
  }
}

const execFileAsync = promisify(execFile)

async function psql (url, sql) {
  await execFileAsync('psql', [url, '-v', 'ON_ERROR_STOP=1', '-q', '-c', sql])
}

/**
 * Runs the crdt-hub binary with `args` (a CLI command such as
 * `snapshot export`) and returns `{ code, stdout, stderr }`; stdout is a
 * Buffer when `binary` is set.
 */
export async function runCli (args, { binary = false } = {}) {
  try {
    const { stdout, stderr } = await execFileAsync(SERVER_BIN, args, {
      env: { ...process.env, RUST_LOG: 'warn' },
      encoding: binary ? 'buffer' : 'utf8',
      maxBuffer: 64 << 20
    })
    return { code: 0, stdout, stderr: String(stderr) }
  } catch (e) {
    if (typeof e.code !== 'number') throw e
    return { code: e.code, stdout: e.stdout, stderr: String(e.stderr) }
  }
}

/** A Scope closed by the test's `after` hook. */
export function useScope (t) {
  const scope = new Scope()
  t.after(() => scope.close())
  return scope
}

// --------------------------------------------------------------------------
// Convergence
// --------------------------------------------------------------------------

/** The root types the tests use, by name and kind. */
export const DEFAULT_TYPES = { text: 'Text', map: 'Map', array: 'Array' }

/**
 * JSON of the tests' root types, plus the state vector. Types are read with
 * getText / getMap / getArray so that a doc that only received them from a
 * peer shows them too.
 */
export function snapshot (doc, types = DEFAULT_TYPES) {
  const content = {}
  for (const [name, kind] of Object.entries(types)) {
    content[name] = doc[`get${kind}`](name).toJSON()
  }
  const sv = Y.decodeStateVector(Y.encodeStateVector(doc))
  return JSON.stringify(canonical({ content, sv: [...sv.entries()].sort((a, b) => a[0] - b[0]) }))
}

/** `value` with object keys sorted, so that Y.Map key order never matters. */
export function canonical (value) {
  if (Array.isArray(value)) return value.map(canonical)
  if (value && typeof value === 'object' && !(value instanceof Uint8Array)) {
    return Object.fromEntries(Object.keys(value).sort().map(k => [k, canonical(value[k])]))
  }
  return value
}

/** Whether all docs have the same state vector and the same content. */
export function converged (docs, types) {
  const first = snapshot(docs[0], types)
  return docs.every(doc => snapshot(doc, types) === first)
}

/** Waits until every client's doc has the same state and content. */
export async function waitConverged (clients, { types, timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  const docs = clients.map(c => c.doc ?? c)
  await waitFor(() => converged(docs, types), timeoutMs, () =>
    'documents did not converge:\n' + docs.map((d, i) => `  #${i}: ${snapshot(d, types).slice(0, 300)}`).join('\n'))
}

// --------------------------------------------------------------------------
// Raw protocol
// --------------------------------------------------------------------------

export const MSG_SYNC = 0
export const MSG_AWARENESS = 1
export const MSG_AUTH = 2
export const MSG_QUERY_AWARENESS = 3
export const SYNC_STEP1 = syncProtocol.messageYjsSyncStep1
export const SYNC_STEP2 = syncProtocol.messageYjsSyncStep2
export const SYNC_UPDATE = syncProtocol.messageYjsUpdate

/** Builds a frame with lib0's encoder. */
export function frame (write) {
  const encoder = encoding.createEncoder()
  write(encoder)
  return encoding.toUint8Array(encoder)
}

export const encodeSyncStep1 = doc => frame(e => {
  encoding.writeVarUint(e, MSG_SYNC)
  syncProtocol.writeSyncStep1(e, doc)
})
export const encodeUpdate = update => frame(e => {
  encoding.writeVarUint(e, MSG_SYNC)
  syncProtocol.writeUpdate(e, update)
})
export const encodeAwareness = update => frame(e => {
  encoding.writeVarUint(e, MSG_AWARENESS)
  encoding.writeVarUint8Array(e, update)
})
export const encodeQueryAwareness = () => frame(e => encoding.writeVarUint(e, MSG_QUERY_AWARENESS))

/** Concatenates frames into one (several messages in one WebSocket frame). */
export function concat (...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) { out.set(p, at); at += p.length }
  return out
}

/**
 * Decodes every message of a server frame. Throws if the frame holds
 * trailing garbage or a message this suite does not know.
 * Returns `[{ type, sync?, payload }]`.
 */
export function decodeMessages (bytes) {
  const decoder = decoding.createDecoder(bytes)
  const messages = []
  while (decoding.hasContent(decoder)) {
    const type = decoding.readVarUint(decoder)
    if (type === MSG_SYNC) {
      const sync = decoding.readVarUint(decoder)
      messages.push({ type, sync, payload: decoding.readVarUint8Array(decoder) })
    } else if (type === MSG_AWARENESS) {
      messages.push({ type, payload: decoding.readVarUint8Array(decoder) })
    } else if (type === MSG_QUERY_AWARENESS) {
      messages.push({ type })
    } else {
      throw new Error(`unexpected message type ${type} in server frame ${Buffer.from(bytes).toString('hex')}`)
    }
  }
  return messages
}

/** Decodes an awareness update into Map(clientID → { clock, state }). */
export function decodeAwarenessUpdate (update) {
  const decoder = decoding.createDecoder(update)
  const states = new Map()
  const count = decoding.readVarUint(decoder)
  for (let i = 0; i < count; i++) {
    const clientID = decoding.readVarUint(decoder)
    const clock = decoding.readVarUint(decoder)
    const state = JSON.parse(decoding.readVarString(decoder))
    states.set(clientID, { clock, state })
  }
  return states
}

/**
 * A bare `ws` socket that records every frame it receives, so tests can
 * speak the y-websocket protocol byte by byte.
 */
export class RawSocket {
  constructor (url, options = {}) {
    this.url = url
    this.frames = []
    this.cursor = 0
    this.httpStatus = null
    this.ws = new WebSocket(url, options)
    this.ws.binaryType = 'nodebuffer'
    this.ws.on('message', (data, isBinary) => {
      this.frames.push({ data: new Uint8Array(data), isBinary })
    })
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve)
      this.ws.once('error', reject)
      this.ws.once('unexpected-response', (req, res) => {
        this.httpStatus = res.statusCode
        res.resume()
        req.destroy()
        reject(Object.assign(new Error(`HTTP ${res.statusCode} instead of an upgrade`), { statusCode: res.statusCode }))
      })
    })
    this.opened.catch(() => {})
    /** Resolves with `{ code, reason }` when the socket closes. */
    this.closed = new Promise(resolve => {
      this.ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))
    })
    this.ws.on('error', () => {}) // surfaced through `opened` / `closed`
  }

  get isOpen () { return this.ws.readyState === WebSocket.OPEN }

  send (bytes) { this.ws.send(bytes) }
  sendText (text) { this.ws.send(text) }

  /** The next frame not yet consumed by `next`. */
  async next (timeoutMs = DEFAULT_TIMEOUT_MS) {
    await waitFor(() => this.frames.length > this.cursor || this.ws.readyState === WebSocket.CLOSED,
      timeoutMs, `no frame from the server on ${this.url}`)
    if (this.frames.length <= this.cursor) {
      const { code, reason } = await this.closed
      throw new Error(`socket closed (${code} ${reason}) while waiting for a frame`)
    }
    return this.frames[this.cursor++]
  }

  /**
   * Consumes frames until one holds a message matching `match`; returns
   * that message.
   */
  async nextMessage (match, timeoutMs = DEFAULT_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const { data } = await this.next(Math.max(1, deadline - Date.now()))
      const found = decodeMessages(data).find(match)
      if (found) return found
    }
  }

  /** Waits for the close and returns `{ code, reason }`. */
  async waitClosed (timeoutMs = DEFAULT_TIMEOUT_MS) {
    return withTimeout(this.closed, timeoutMs, `socket ${this.url} was not closed by the server`)
  }

  close () { try { this.ws.close() } catch {} }
  terminate () { try { this.ws.terminate() } catch {} }
}

/**
 * Opens a WebSocket to `/${encodedPath}` and returns the HTTP status the
 * server answered with instead of upgrading (or 101 if it upgraded).
 */
export async function upgradeStatus (server, encodedPath) {
  const socket = new RawSocket(`${server.url}/${encodedPath}`)
  try {
    await withTimeout(socket.opened, DEFAULT_TIMEOUT_MS, `no answer to the upgrade of /${encodedPath}`)
    return 101
  } catch (e) {
    if (socket.httpStatus !== null) return socket.httpStatus
    throw e
  } finally {
    socket.terminate()
  }
}

export { Y, encoding, decoding, syncProtocol, WebSocket }
