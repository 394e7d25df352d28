// The rich-text page at /rich end to end: Tiptap + @hocuspocus/provider in
// real headless Chromium against the real crdt-hub binary (its Hocuspocus
// endpoint at ws://HOST/). Two people see each other's text and named
// carets, one goes offline, writes, comes back, and both converge; the
// status says "Saved" only once the server has stored the edits, which a
// crash right after proves.

import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { request } from 'node:http'
import { gunzipSync } from 'node:zlib'

import {
  ARTIFACTS, SERVER_BIN, delay, launchBrowser, openPage, startServer, uniqueRoom, waitFor, withTimeout,
  assertFitsWidth, recordStatus
} from './harness.mjs'

let server
let browser
const pages = []
const servers = []

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true })
  server = await startServer()
  servers.push(server)
  browser = await launchBrowser()
})

after(async () => {
  await Promise.allSettled([
    browser && withTimeout(browser.close(), 15_000, 'closing Chromium'),
    ...servers.map(s => s.stop())
  ])
})

/** Opens /rich?room=… as `name` (stored where the page reads its identity). */
async function open (srv, room, name, options = {}) {
  const page = await openPage(browser, srv, options)
  pages.push(page)
  page.sockets = []
  page.on('websocket', ws => page.sockets.push(ws.url()))
  await page.context().addInitScript(n => window.localStorage.setItem('crdt-hub:name', n), name)
  const token = options.token ? `&token=${encodeURIComponent(options.token)}` : ''
  await page.goto(`${srv.url}/rich?room=${encodeURIComponent(room)}${token}`)
  await page.locator('.ProseMirror').waitFor()
  return page
}

const editorText = page => page.evaluate(() => window.crdtHub.editor.getText({ blockSeparator: '\n' }))
const statusText = page => page.locator('#status .status-text').textContent()
const statusPhase = page => page.locator('#status').getAttribute('data-state')
const caretLabels = page => page.locator('.collaboration-carets__label').allTextContents()

async function waitStatus (page, text, timeoutMs) {
  await waitFor(async () => (await statusText(page)) === text,
    async () => `"${text}", status is "${await statusText(page)}" (unsyncedChanges ${await page.evaluate(() => window.crdtHub.provider.unsyncedChanges)})`,
    timeoutMs)
}

async function typeAtEnd (page, text) {
  await page.locator('.ProseMirror').click()
  await page.keyboard.press('Control+End')
  await page.keyboard.type(text, { delay: 5 })
}

function get (url, headers) {
  return new Promise((resolve, reject) => {
    request(url, { headers }, res => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    }).on('error', reject).end()
  })
}


async function storedJson (srv, room) {
  const response = await fetch(`${srv.url}/api/rooms/${encodeURIComponent(room)}/json`)
  assert.equal(response.status, 200)
  return JSON.stringify(await response.json())
}

test('/rich is served like / : revalidated page with the CSP, immutable gzipped assets', async () => {
  const page = await get(`${server.url}/rich?room=headers`, {})
  assert.equal(page.status, 200)
  assert.equal(page.headers['content-type'], 'text/html; charset=utf-8')
  assert.equal(page.headers['cache-control'], 'no-cache')
  assert.match(page.headers['content-security-policy'], /script-src 'self'/)
  assert.match(page.headers['content-security-policy'], /connect-src 'self'/)
  assert.equal(page.headers['referrer-policy'], 'no-referrer')
  const html = page.body.toString()
  const script = /src="(\/assets\/rich\.js\?v=\w+)"/.exec(html)?.[1]
  const stylesheet = /href="(\/assets\/rich\.css\?v=\w+)"/.exec(html)?.[1]
  assert.ok(script && stylesheet, `rich.html links its own assets:\n${html}`)

  const again = await get(`${server.url}/rich`, { 'if-none-match': page.headers.etag })
  assert.equal(again.status, 304)
  const plain = await get(`${server.url}/`, {})
  assert.notEqual(plain.headers.etag, page.headers.etag, '/ is still the plain page')
  assert.match(plain.body.toString(), /\/assets\/app\.js\?v=/)

  const js = await get(`${server.url}${script}`, { 'accept-encoding': 'identity' })
  assert.equal(js.status, 200)
  assert.equal(js.headers['content-type'], 'text/javascript; charset=utf-8')
  assert.match(js.headers['cache-control'], /max-age=31536000, immutable/)
  const gz = await get(`${server.url}${script}`, { 'accept-encoding': 'gzip' })
  assert.equal(gz.headers['content-encoding'], 'gzip')
  assert.ok(gunzipSync(gz.body).equals(js.body), 'the gzip copy is the same script')
  const stale = await get(`${server.url}/assets/rich.js?v=0000`, {})
  assert.equal(stale.headers['cache-control'], 'no-cache')
  const css = await get(`${server.url}${stylesheet}`, {})
  assert.equal(css.headers['content-type'], 'text/css; charset=utf-8')
})

test('rich text: two people see each other\'s text and named carets, one goes offline, both converge and are saved', async () => {
  const room = uniqueRoom('rich')
  const alice = await open(server, room, 'Alice')
  const bob = await open(server, room, 'Bob')
  for (const page of [alice, bob]) await waitStatus(page, 'Saved')
  // @hocuspocus/provider talks to the page's own server, no room in the path.
  assert.deepEqual(alice.sockets, [`ws://${server.addr}/`])

  await typeAtEnd(alice, 'Launch plan')
  await waitFor(async () => (await editorText(bob)) === 'Launch plan',
    async () => `Bob to see Alice's text, he has ${JSON.stringify(await editorText(bob))}`)
  await waitFor(async () => (await caretLabels(bob)).includes('Alice'),
    async () => `Alice's named caret in Bob's editor, saw ${JSON.stringify(await caretLabels(bob))}`)
  await typeAtEnd(bob, ' — Bob was here')
  await waitFor(async () => (await editorText(alice)) === 'Launch plan — Bob was here',
    async () => `Alice to see Bob's text, she has ${JSON.stringify(await editorText(alice))}`)
  await waitFor(async () => (await caretLabels(alice)).includes('Bob'),
    async () => `Bob's named caret in Alice's editor, saw ${JSON.stringify(await caretLabels(alice))}`)
  for (const page of [alice, bob]) await waitStatus(page, 'Saved')
  assert.match(await storedJson(server, room), /Launch plan — Bob was here/)

  // Alice goes offline on purpose: her edits stay here and are counted.
  await alice.click('#toggle-online')
  await waitFor(async () => (await statusPhase(alice)) === 'offline', 'Alice to be offline')
  assert.equal(await alice.locator('#toggle-online').textContent(), 'Go online')
  await waitFor(async () => !(await caretLabels(bob)).includes('Alice'),
    async () => `Bob to see Alice's caret go, saw ${JSON.stringify(await caretLabels(bob))}`)
  await typeAtEnd(alice, '\nOffline: Alice writes the announcement')
  await typeAtEnd(bob, '!')
  await waitFor(async () => /^Offline — \d+ unsaved edits?$/.test(await statusText(alice)),
    async () => `Alice's status to count unsaved edits, it says "${await statusText(alice)}"`)
  const offlineCount = Number(/\d+/.exec(await statusText(alice))[0])
  assert.ok(offlineCount >= 2, `a transaction per key typed offline, counted ${offlineCount}`)
  await delay(300) // nothing may leak while offline
  assert.ok(!(await editorText(bob)).includes('Offline: Alice'), 'Bob cannot see offline edits')
  assert.ok(!(await editorText(alice)).endsWith('here!'), 'Alice cannot see Bob while offline')
  await fs.promises.writeFile(path.join(ARTIFACTS, 'rich-offline-alice.png'), await alice.screenshot())

  // Back online: both converge, and both say "Saved" once it is stored.
  await alice.click('#toggle-online')
  await waitFor(async () => {
    const [a, b] = await Promise.all([editorText(alice), editorText(bob)])
    return a === b && a.includes('Offline: Alice writes the announcement') && a.includes('Bob was here!')
  }, async () => `convergence: Alice has ${JSON.stringify(await editorText(alice))}, Bob has ${JSON.stringify(await editorText(bob))}`)
  for (const page of [alice, bob]) await waitStatus(page, 'Saved')
  // Bob's caret is back in Alice's editor at once (not only when he next
  // moves it); Alice's shows again once she is back in the editor (the
  // click on "Go online" took the focus, and without focus no caret).
  await waitFor(async () => (await caretLabels(alice)).includes('Bob'),
    async () => `Bob's caret back in Alice's editor, saw ${JSON.stringify(await caretLabels(alice))}`, 5_000)
  await alice.locator('.ProseMirror').click()
  await waitFor(async () => (await caretLabels(bob)).includes('Alice'),
    async () => `Alice's caret back in Bob's editor, saw ${JSON.stringify(await caretLabels(bob))}`, 5_000)
  const final = await editorText(alice)
  assert.equal(final, 'Launch plan — Bob was here!\nOffline: Alice writes the announcement')

  await delay(300)
  const shots = await Promise.all([alice.screenshot(), bob.screenshot()])
  await fs.promises.writeFile(path.join(ARTIFACTS, 'rich-alice.png'), shots[0])
  await fs.promises.writeFile(path.join(ARTIFACTS, 'rich-bob.png'), shots[1])

  // On a 375 px phone nothing sticks out sideways, online or offline.
  const phone = await open(server, room, 'Dana on a phone', { viewport: { width: 375, height: 740 }, mobile: true })
  await waitStatus(phone, 'Saved')
  await waitFor(async () => (await editorText(phone)) === final, 'the phone to sync')
  await assertFitsWidth(phone)
  await fs.promises.writeFile(path.join(ARTIFACTS, 'rich-phone-375.png'), await phone.screenshot())
  await phone.click('#toggle-online')
  await typeAtEnd(phone, ' (read on the train)')
  await waitFor(async () => /unsaved/.test(await statusText(phone)), 'the phone to count unsaved edits')
  await assertFitsWidth(phone)
  await fs.promises.writeFile(path.join(ARTIFACTS, 'rich-phone-375-offline.png'), await phone.screenshot())
  await phone.click('#toggle-online')
  await waitFor(async () => (await editorText(alice)).endsWith('(read on the train)'), 'the phone\'s offline edit to reach Alice')
  await waitStatus(phone, 'Saved')

  for (const page of [alice, bob, phone]) {
    assert.deepEqual(page.problems, [], 'the page logged errors or reached outside the server')
  }
})


test('rich text: "Saved" means stored: a server killed right after keeps the edit', async () => {
  // Updates reach the database once a second: "Saved" any sooner would
  // be a lie that the crash below shows.
  const crashing = await startServer(['--flush-interval', '1s'])
  servers.push(crashing)
  const room = uniqueRoom('rich-durable')
  const page = await open(crashing, room, 'Dora')
  await waitStatus(page, 'Saved')
  const statusLog = await recordStatus(page)
  await typeAtEnd(page, 'Stored before the crash')
  // "Saving…" shows first (the edit waits for the database), then "Saved".
  await waitStatus(page, 'Saved')
  const log = await statusLog()
  assert.ok(log[1] === 'Saving…' && log.at(-1) === 'Saved' && log.every(t => t === 'Saved' || t === 'Saving…'),
    `"Saving…" while the edit waited for the database, then "Saved": ${JSON.stringify(log)}`)
  await crashing.crash()
  await waitFor(async () => (await statusPhase(page)) === 'offline', 'the page to notice the crash')

  const reopened = await startServer([], { dir: crashing.dir })
  servers.push(reopened)
  assert.match(await storedJson(reopened, room), /Stored before the crash/)
})

test('rich text with auth on: the page token opens the document; read-only is read-only; a wrong room is refused', async () => {
  const secret = 'rich-secret-0123456789abcdef'
  const mint = (room, role) => execFileSync(SERVER_BIN,
    ['token', '--auth-secret', secret, '--room', room, '--role', role, '--ttl', '1h', '--sub', 'browser'],
    { encoding: 'utf8' }).trim()
  const guarded = await startServer(['--auth-secret', secret])
  servers.push(guarded)
  const room = uniqueRoom('rich-auth')

  const writer = await open(guarded, room, 'Wanda', { token: mint(room, 'write') })
  await waitStatus(writer, 'Saved')
  await typeAtEnd(writer, 'Written with a token')
  await waitStatus(writer, 'Saved')

  const reader = await open(guarded, room, 'Rita', { token: mint(room, 'read') })
  await waitStatus(reader, 'Read-only')
  await waitFor(async () => (await editorText(reader)) === 'Written with a token', 'the reader to see the text')
  assert.equal(await reader.locator('.ProseMirror').getAttribute('contenteditable'), 'false')

  const stranger = await open(guarded, room, 'Sam', { token: mint(`${room}-other`, 'write') })
  await waitStatus(stranger, 'Refused by the server')
  assert.match(await stranger.locator('#sync-note').textContent(), /refused/)
  assert.equal(await editorText(stranger), '', 'nothing of the room reaches a refused page')
  assert.deepEqual(writer.problems, [])
})

test('rich text: a dropped socket reconnects by itself; what was typed meanwhile is merged and saved', async () => {
  const room = uniqueRoom('rich-drop')
  const alice = await open(server, room, 'Alice')
  const bob = await open(server, room, 'Bob')
  for (const page of [alice, bob]) await waitStatus(page, 'Saved')
  await typeAtEnd(alice, 'Before the drop.')
  await waitFor(async () => (await editorText(bob)) === 'Before the drop.', 'Bob to see the first line')

  // The network drops Alice's socket (not her choice): the provider
  // retries on its own, and her edits meanwhile wait.
  const statusLog = await recordStatus(alice)
  await alice.evaluate(() => window.crdtHub.provider.configuration.websocketProvider.webSocket.close())
  await waitFor(async () => (await statusPhase(alice)) === 'offline', 'Alice to notice the drop')
  await typeAtEnd(alice, ' Typed during the drop.')
  assert.ok((await statusLog()).some(t => /^Offline — \d+ unsaved edits?$/.test(t)),
    `the edits typed during the drop were counted: ${JSON.stringify(await statusLog())}`)
  await waitFor(async () => alice.sockets.length === 2, 'a second socket, opened by the provider itself')
  assert.equal(await alice.locator('#toggle-online').textContent(), 'Go offline', 'still meant to be online')
  await waitFor(async () => (await editorText(bob)) === 'Before the drop. Typed during the drop.',
    async () => `Bob to get the edit made during the drop, he has ${JSON.stringify(await editorText(bob))}`)
  await waitStatus(alice, 'Saved')
  assert.deepEqual(alice.problems, [])
})
