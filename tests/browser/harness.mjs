// Harness for the browser test: the real crdt-hub binary on a free port with
// its own SQLite file, and Debian's headless Chromium driven through
// playwright-core. Everything started here is stopped by `dispose()` even
// when an assertion fails, so `node --test` always exits.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { chromium } from 'playwright-core'

const here = path.dirname(fileURLToPath(import.meta.url))

/** The server binary: `CRDT_HUB_BIN`, or the workspace's debug build. */
export const SERVER_BIN = process.env.CRDT_HUB_BIN
  ? path.resolve(process.env.CRDT_HUB_BIN)
  : path.resolve(here, '../../target/debug/crdt-hub')

/** Debian's `chromium` package (playwright's own browser download is not used). */
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium'

/** Screenshots for people to look at (git-ignored). */
export const ARTIFACTS = path.join(here, 'artifacts')

/** Generous on a loaded 2-core machine; polling makes success fast anyway. */
export const TIMEOUT_MS = 15_000
const START_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 10_000

export function delay (ms) {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** Rejects with `message` if `promise` does not settle within `ms`. */
export async function withTimeout (promise, ms, message) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${message}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Polls `predicate` until it returns something truthy, which is returned.
 * Throws after `timeoutMs` with `describe()` in the message, so a failure
 * shows the state that did not converge.
 */
export async function waitFor (predicate, describe, timeoutMs = TIMEOUT_MS) {
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
      const what = typeof describe === 'function' ? await describe() : describe
      const cause = lastError ? ` (last error: ${lastError.message})` : ''
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}`)
    }
    await delay(50)
  }
}

let roomCounter = 0
/** A room name no other test run uses. */
export function uniqueRoom (prefix) {
  roomCounter += 1
  return `${prefix}-${process.pid}-${roomCounter}-${Math.random().toString(36).slice(2, 8)}`
}

/**
 * Starts `crdt-hub serve` on 127.0.0.1:0 with a fresh SQLite database and
 * resolves once it logged its `listening … addr=HOST:PORT` line. With
 * `dir` (the `dir` of a server that crashed), it reopens that database
 * instead, to see what was stored.
 */
export async function startServer (extraArgs = [], { dir: reuseDir = null } = {}) {
  if (!fs.existsSync(SERVER_BIN)) {
    throw new Error(`server binary not found at ${SERVER_BIN}: run \`cargo build -p crdt-hub\` or set CRDT_HUB_BIN`)
  }
  const dir = reuseDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'crdt-hub-browser-'))
  const args = ['serve', '--bind', '127.0.0.1:0', '--database-url', `sqlite://${path.join(dir, 'x.db')}`, ...extraArgs]
  const child = spawn(SERVER_BIN, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info', NO_COLOR: '1' }
  })
  const log = []
  const exited = once(child, 'exit')
  let pending = ''
  let foundAddr
  const addrFound = new Promise(resolve => { foundAddr = resolve })
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', chunk => {
    pending += chunk
    const lines = pending.split('\n')
    pending = lines.pop()
    for (const raw of lines) {
      const line = raw.replace(/\x1b\[[0-9;]*m/g, '') // eslint-disable-line no-control-regex
      log.push(line)
      if (process.env.BROWSER_TEST_SERVER_LOG) process.stderr.write(`[server] ${line}\n`)
      const match = line.includes('listening') && /addr=(\S+:\d+)/.exec(line)
      if (match) foundAddr(match[1])
    }
  })

  const server = {
    process: child,
    log,
    dir,
    addr: null,
    get url () { return `http://${this.addr}` },
    async stop () {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
        await exited
        clearTimeout(timer)
      }
      fs.rmSync(dir, { recursive: true, force: true })
    },
    /**
     * SIGKILL: no shutdown, no last flush. The database keeps only what
     * the server had stored; `startServer([], { dir })` reopens it. The
     * caller removes `dir` (by `stop()` of the reopened server).
     */
    async crash () {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL')
        await exited
      }
    }
  }
  // Last resort if the test process dies without running its hooks.
  process.once('exit', () => { try { child.kill('SIGKILL') } catch {} })

  const failedEarly = exited.then(([code, signal]) => {
    throw new Error(`server exited before listening (code ${code}, signal ${signal}):\n${log.join('\n')}`)
  })
  try {
    server.addr = await withTimeout(Promise.race([addrFound, failedEarly]), START_TIMEOUT_MS,
      `server did not log its listening address:\n${log.join('\n')}`)
  } catch (e) {
    await server.stop()
    throw e
  } finally {
    failedEarly.catch(() => {})
  }
  return server
}

/** Headless Chromium from Debian's package. */
export async function launchBrowser () {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_BIN)`)
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: START_TIMEOUT_MS
  })
}

/**
 * A page in its own browser context (own localStorage, like another
 * person's browser) that records console errors, page errors and every
 * request that leaves the server's origin.
 */
export async function openPage (browser, server, { viewport = { width: 1100, height: 720 }, mobile = false } = {}) {
  const context = await browser.newContext({
    viewport,
    deviceScaleFactor: mobile ? 2 : 1,
    isMobile: mobile,
    hasTouch: mobile
  })
  context.setDefaultTimeout(TIMEOUT_MS)
  const page = await context.newPage()
  page.problems = []
  page.on('console', message => {
    if (message.type() === 'error') page.problems.push(`console error: ${message.text()}`)
  })
  page.on('pageerror', error => page.problems.push(`page error: ${error.message}`))
  page.on('request', request => {
    const url = new URL(request.url())
    if (url.protocol !== 'data:' && url.host !== server.addr) {
      page.problems.push(`request outside the server: ${request.url()}`)
    }
  })
  return page
}

/**
 * Starts recording what the status badge says (every change, in order);
 * returns a function that resolves to the list so far.
 */
export async function recordStatus (page) {
  await page.evaluate(() => {
    const text = document.querySelector('#status .status-text')
    window.statusLog = [text.textContent]
    new MutationObserver(() => {
      if (window.statusLog.at(-1) !== text.textContent) window.statusLog.push(text.textContent)
    }).observe(text, { childList: true, characterData: true, subtree: true })
  })
  return () => page.evaluate(() => window.statusLog)
}

/** Nothing on the page sticks out sideways: no horizontal scrolling, every control reachable. */
export async function assertFitsWidth (page) {
  const { overflow, outside } = await page.evaluate(() => ({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    outside: Array.from(document.querySelectorAll('button, input, .status'))
      .filter(el => { const r = el.getBoundingClientRect(); return r.left < 0 || r.right > window.innerWidth })
      .map(el => el.id || el.className)
  }))
  assert.ok(overflow <= 0, `no horizontal scrolling (overflows by ${overflow} px)`)
  assert.deepEqual(outside, [], 'controls cut off at the side')
}
