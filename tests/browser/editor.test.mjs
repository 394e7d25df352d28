// The web demo end to end: the real crdt-hub binary serves the page, real
// headless Chromium runs it, and people in separate browser contexts (own
// localStorage, like separate browsers) edit together through the server.

import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { gunzipSync } from 'node:zlib'

import {
  ARTIFACTS, SERVER_BIN, delay, launchBrowser, openPage, startServer, uniqueRoom, waitFor, withTimeout,
  assertFitsWidth, recordStatus
} from './harness.mjs'

let server
let browser
const pages = []

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true })
  server = await startServer()
  browser = await launchBrowser()
})

after(async () => {
  // Always both, even if one fails.
  await Promise.allSettled([
    browser && withTimeout(browser.close(), 15_000, 'closing Chromium'),
    server?.stop()
  ])
})

async function open (room, options) {
  const page = await openPage(browser, server, options)
  pages.push(page)
  page.sockets = []
  page.on('websocket', ws => page.sockets.push(ws.url()))
  await page.goto(`${server.url}/?room=${encodeURIComponent(room)}`)
  await page.locator('.cm-content').waitFor()
  return page
}

const editorText = page => page.evaluate(() => window.crdtHub.view.state.doc.toString())
const statusText = page => page.locator('#status .status-text').textContent()
const statusPhase = page => page.locator('#status').getAttribute('data-state')
const people = page => page.locator('#people .person-name').allTextContents()

async function waitConnected (page) {
  await waitFor(async () => (await statusPhase(page)) === 'connected',
    async () => `"Connected", status is "${await statusText(page)}"`)
}

async function setName (page, name) {
  await page.fill('#name-input', name)
}

/** Types at the end of the document. */
async function typeAtEnd (page, text) {
  await page.locator('.cm-content').click()
  await page.keyboard.press('Control+End')
  await page.keyboard.type(text, { delay: 5 })
}

/** The remote carets drawn in `page`, as `{ name, opacity }`. */
function remoteCarets (page) {
  return page.locator('.cm-ySelectionCaret').evaluateAll(carets => carets.map(caret => {
    const label = caret.querySelector('.cm-ySelectionInfo')
    return { name: label?.textContent, opacity: label && getComputedStyle(label).opacity }
  }))
}


function assertNoProblems (page) {
  assert.deepEqual(page.problems, [], 'the page logged errors or reached outside the server')
}

test('the server serves the page and its assets with types and cache headers', async () => {
  const page = await fetch(`${server.url}/?room=headers`)
  assert.equal(page.status, 200)
  assert.equal(page.headers.get('content-type'), 'text/html; charset=utf-8')
  assert.equal(page.headers.get('cache-control'), 'no-cache')
  const html = await page.text()
  const script = /src="(\/assets\/app\.js\?v=\w+)"/.exec(html)?.[1]
  const stylesheet = /href="(\/assets\/app\.css\?v=\w+)"/.exec(html)?.[1]
  assert.ok(script && stylesheet, `index.html links both assets:\n${html}`)

  const again = await fetch(`${server.url}/`, { headers: { 'if-none-match': page.headers.get('etag') } })
  assert.equal(again.status, 304)

  // node's fetch would decompress for us; ask for the raw bytes instead.
  const js = await fetch(`${server.url}${script}`, { headers: { 'accept-encoding': 'identity' } })
  assert.equal(js.status, 200)
  assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8')
  assert.match(js.headers.get('cache-control'), /max-age=31536000/)
  const body = Buffer.from(await js.arrayBuffer())

  const { request } = await import('node:http')
  const gz = await new Promise((resolve, reject) => {
    request(`${server.url}${script}`, { headers: { 'accept-encoding': 'gzip' } }, res => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    }).on('error', reject).end()
  })
  assert.equal(gz.headers['content-encoding'], 'gzip')
  assert.ok(gunzipSync(gz.body).equals(body), 'the gzip copy is the same script')
  assert.ok(gz.body.length < body.length / 2)

  const css = await fetch(`${server.url}${stylesheet}`)
  assert.equal(css.headers.get('content-type'), 'text/css; charset=utf-8')

  // A room path without an upgrade is still a room, not a page.
  const room = await fetch(`${server.url}/assets/other.js`)
  assert.equal(room.status, 426)
})

test('two people edit together, one goes offline, both converge; other rooms see nothing', async () => {
  const room = uniqueRoom('notes')
  const otherRoom = uniqueRoom('elsewhere')

  const alice = await open(room)
  const bob = await open(room)
  const carol = await open(otherRoom)
  await setName(alice, 'Alice')
  await setName(bob, 'Bob')
  await setName(carol, 'Carol')
  await Promise.all([alice, bob, carol].map(waitConnected))

  // The page talks to the server it came from, in the room from its URL,
  // and asks for acks of durable writes.
  assert.deepEqual(alice.sockets, [`ws://${server.addr}/${room}?acks=1`])

  // Who is here: each sees both, themselves first.
  for (const page of [alice, bob]) {
    await waitFor(async () => (await people(page)).length === 2,
      async () => `two people in ${room}, saw ${JSON.stringify(await people(page))}`)
  }
  assert.deepEqual(await people(alice), ['Alice', 'Bob'])
  assert.deepEqual(await people(bob), ['Bob', 'Alice'])
  assert.deepEqual(await people(carol), ['Carol'])
  const colors = await alice.locator('#people .avatar').evaluateAll(els => els.map(el => el.style.backgroundColor))
  assert.notEqual(colors[0], colors[1], 'two people in a room get different colours')

  // Alice types; Bob sees the text and Alice's caret with her name on it.
  await typeAtEnd(alice, 'Launch checklist\n- Alice: write the announcement')
  await waitFor(async () => (await editorText(bob)) === 'Launch checklist\n- Alice: write the announcement',
    async () => `Bob to see Alice's text, he has ${JSON.stringify(await editorText(bob))}`)
  await waitFor(async () => (await remoteCarets(bob)).some(c => c.name === 'Alice' && c.opacity === '1'),
    async () => `Alice's named caret in Bob's editor, saw ${JSON.stringify(await remoteCarets(bob))}`)
  await typeAtEnd(bob, '\n- Bob: try it on a phone')
  await waitFor(async () => (await remoteCarets(alice)).some(c => c.name === 'Bob'),
    async () => `Bob's caret in Alice's editor, saw ${JSON.stringify(await remoteCarets(alice))}`)
  await waitFor(async () => (await editorText(alice)) === (await editorText(bob)),
    'Alice and Bob to agree before going offline')

  // Alice goes offline: her edits stay local and are counted as unsent.
  await alice.click('#toggle-online')
  await waitFor(async () => (await statusPhase(alice)) === 'offline', 'Alice to be offline')
  assert.equal(await alice.locator('#toggle-online').textContent(), 'Go online')
  await waitFor(async () => (await people(bob)).length === 1,
    async () => `Bob to see Alice leave, saw ${JSON.stringify(await people(bob))}`)
  await typeAtEnd(alice, '\n- Alice (offline): update the screenshots')
  await typeAtEnd(bob, '\n- Bob: tag the release')
  assert.ok((await editorText(alice)).endsWith('\n- Alice (offline): update the screenshots'), 'offline edits show at once')
  // Without acks "Offline · N unsent edits"; with them "Offline — N unsaved edits".
  await waitFor(async () => /^Offline( · \d+ unsent| — \d+ unsaved) edits?$/.test(await statusText(alice)),
    async () => `Alice's status to count unsent edits, it says "${await statusText(alice)}"`)
  await delay(300) // nothing may leak while offline
  assert.ok(!(await editorText(bob)).includes('Alice (offline)'), 'Bob cannot see offline edits')
  assert.ok(!(await editorText(alice)).includes('tag the release'), 'Alice cannot see Bob while offline')

  await fs.promises.writeFile(path.join(ARTIFACTS, 'offline-alice.png'), await alice.screenshot())

  // Back online: the edits merge and both see the same text.
  await alice.click('#toggle-online')
  await waitConnected(alice)
  assert.match(await statusText(alice), /^(Connected|Saving…|Saved)$/)
  await waitFor(async () => {
    const [a, b] = await Promise.all([editorText(alice), editorText(bob)])
    return a === b && a.includes('- Alice (offline): update the screenshots') && a.includes('- Bob: tag the release')
  }, async () => `convergence: Alice has ${JSON.stringify(await editorText(alice))}, Bob has ${JSON.stringify(await editorText(bob))}`)
  assert.ok((await editorText(alice)).startsWith('Launch checklist\n- Alice: write the announcement\n- Bob: try it on a phone\n'))
  await waitFor(async () => (await people(bob)).length === 2, 'Bob to see Alice again')
  // Alice sees Bob again at once, not only when his awareness next renews
  // (every 15 s) or his cursor moves.
  await waitFor(async () => (await people(alice)).length === 2,
    async () => `Alice to see Bob again, saw ${JSON.stringify(await people(alice))}`, 5_000)
  await waitFor(async () => (await remoteCarets(alice)).some(c => c.name === 'Bob'), 'Bob\'s caret back in Alice\'s editor', 5_000)

  // Another room saw none of it.
  assert.equal(await editorText(carol), '')
  assert.deepEqual(await people(carol), ['Carol'])
  assert.deepEqual(await remoteCarets(carol), [])

  // Screenshots for people: both editors side by side, and a phone.
  await delay(300) // let the carets settle before the picture
  const shots = await Promise.all([alice.screenshot(), bob.screenshot()])
  for (const [name, png] of [['alice', shots[0]], ['bob', shots[1]]]) {
    await fs.promises.writeFile(path.join(ARTIFACTS, `${name}.png`), png)
  }
  await writeSideBySide(shots, path.join(ARTIFACTS, 'side-by-side.png'))

  const phone = await open(room, { viewport: { width: 375, height: 740 }, mobile: true })
  await setName(phone, 'Dana on a phone')
  await waitConnected(phone)
  await waitFor(async () => (await editorText(phone)) === (await editorText(alice)), 'the phone to sync')
  await assertFitsWidth(phone)
  await fs.promises.writeFile(path.join(ARTIFACTS, 'phone-375.png'), await phone.screenshot({ fullPage: true }))
  // Offline, the status grows ("Offline · N unsent edits"): still no overflow.
  await phone.click('#toggle-online')
  await typeAtEnd(phone, '\n- Dana: read on the train')
  await waitFor(async () => /unsent|unsaved/.test(await statusText(phone)), 'the phone to count unsent edits')
  await assertFitsWidth(phone)
  await fs.promises.writeFile(path.join(ARTIFACTS, 'phone-375-offline.png'), await phone.screenshot())
  await phone.click('#toggle-online')
  await waitFor(async () => (await editorText(alice)).endsWith('read on the train'), 'the phone\'s offline edit to reach Alice')

  for (const page of pages) assertNoProblems(page)
})


/** Puts two screenshots next to each other by letting Chromium draw them. */
async function writeSideBySide (pngs, file) {
  const page = await browser.newPage({ viewport: { width: 2 * 1100 + 24, height: 720 } })
  try {
    const imgs = pngs.map(png => `<img src="data:image/png;base64,${png.toString('base64')}">`).join('')
    await page.setContent(`<body style="margin:0;display:flex;gap:24px;background:#0f172a">${imgs}</body>`)
    await page.waitForFunction(() => Array.from(document.images).every(img => img.complete))
    await fs.promises.writeFile(file, await page.screenshot())
  } finally {
    await page.close()
  }
}

test('the room comes from the URL, the token reaches the server, and the page links elsewhere', async () => {
  const page = await openPage(browser, server)
  pages.push(page)
  const sockets = []
  page.on('websocket', ws => sockets.push(ws.url()))
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url })

  // No room in the URL: the page picks one and writes it into the URL.
  await page.goto(`${server.url}/?token=s3cret`)
  await waitConnected(page)
  const url = new URL(page.url())
  const room = url.searchParams.get('room')
  assert.match(room, /^[a-z]+-[a-z]+-[0-9a-z]{4}$/)
  assert.equal(url.searchParams.get('token'), 's3cret', 'the token stays in the address bar')
  assert.equal(await page.locator('#room-name').textContent(), room)
  assert.deepEqual(sockets, [`ws://${server.addr}/${room}?token=s3cret&acks=1`])

  // The share link names the room but not this person's token.
  const link = `${server.url}/?room=${room}`
  assert.equal(await page.inputValue('#share-url'), link)
  await page.click('#share')
  await waitFor(async () => (await page.locator('#share').textContent()) === 'Link copied', 'the share button to confirm the copy')
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), link)

  // Switching rooms keeps the token; any room name works.
  await page.fill('#room-input', 'team notes/2025?draft')
  await Promise.all([page.waitForURL(/team/), page.press('#room-input', 'Enter')])
  await waitConnected(page)
  const next = new URL(page.url())
  assert.equal(next.searchParams.get('room'), 'team notes/2025?draft')
  assert.equal(next.searchParams.get('token'), 's3cret')
  assert.equal(sockets.at(-1), `ws://${server.addr}/team%20notes%2F2025%3Fdraft?token=s3cret&acks=1`)
  assert.equal(await page.title(), 'team notes/2025?draft · crdt-hub')

  // Names persist across pages of the same browser.
  await page.fill('#name-input', 'Erin')
  await page.reload()
  await waitConnected(page)
  assert.equal(await page.inputValue('#name-input'), 'Erin')
  assertNoProblems(page)
})

const versionIds = page => page.locator('#versions .version').evaluateAll(els => els.map(el => Number(el.dataset.versionId)))
const versionsHint = page => page.locator('#versions-hint').evaluate(el => el.hidden ? '' : el.textContent)

/** Accepts every confirm() and remembers what it asked. */
function acceptDialogs (page) {
  page.dialogs = []
  page.on('dialog', dialog => {
    page.dialogs.push(dialog.message())
    dialog.accept().catch(() => {})
  })
}

test('versions: save one, write on, restore it live in every editor', async () => {
  // A name with a space, a slash and a '?': the API path is one encoded segment.
  const room = uniqueRoom('release notes/v2?')
  const alice = await open(room, { viewport: { width: 1100, height: 960 } })
  const bob = await open(room)
  acceptDialogs(alice)
  const apiCalls = []
  alice.on('request', request => {
    const url = new URL(request.url())
    if (url.pathname.startsWith('/api/')) apiCalls.push(`${request.method()} ${url.pathname}`)
  })
  await setName(alice, 'Alice')
  await setName(bob, 'Bob')
  await Promise.all([alice, bob].map(waitConnected))

  // A room with nothing stored yet.
  for (const page of [alice, bob]) {
    await waitFor(async () => (await versionsHint(page)) === 'No saved versions yet.',
      async () => `the empty versions list, hint is ${JSON.stringify(await versionsHint(page))}`)
  }

  const saved = 'Release notes\n- faster sync'
  await typeAtEnd(alice, saved)
  await waitFor(async () => (await editorText(bob)) === saved, 'Bob to get the first draft')
  await alice.click('#save-version')
  // (The server also writes versions by itself every 30 s while a room
  // changes, so the test goes by ids rather than counts.)
  const savedNote = await waitFor(async () => /^Saved as version #(\d+)\.$/.exec(await alice.locator('#versions-note').textContent()),
    async () => `the save to be confirmed, the note says ${JSON.stringify(await alice.locator('#versions-note').textContent())}`)
  const savedId = Number(savedNote[1])
  await waitFor(async () => (await versionIds(alice)).includes(savedId),
    async () => `version #${savedId} in the list, saw ${JSON.stringify(await versionIds(alice))}`)
  assert.equal(await alice.locator('[data-testid="versions-count"]').textContent(), String((await versionIds(alice)).length))
  assert.ok(apiCalls.includes(`POST /api/rooms/${encodeURIComponent(room)}/snapshot`),
    `the API path names the room as one segment: ${JSON.stringify(apiCalls)}`)

  // Both keep writing after the save.
  await typeAtEnd(alice, '\n- a mistake')
  await typeAtEnd(bob, '\n- Bob: another mistake')
  await waitFor(async () => {
    const [a, b] = await Promise.all([editorText(alice), editorText(bob)])
    return a === b && a.includes('a mistake') && a.includes('another mistake')
  }, 'Alice and Bob to agree on the later text')

  // Restore the saved version: after a confirmation, both editors go back
  // to exactly the saved text, with no reload.
  const navigations = { alice: 0, bob: 0 }
  alice.on('framenavigated', () => { navigations.alice += 1 })
  bob.on('framenavigated', () => { navigations.bob += 1 })
  await alice.click(`#versions .version[data-version-id="${savedId}"] .version-restore`)
  await waitFor(async () => (await editorText(alice)) === saved && (await editorText(bob)) === saved,
    async () => `both editors to show the saved text: Alice has ${JSON.stringify(await editorText(alice))}, Bob has ${JSON.stringify(await editorText(bob))}`)
  assert.equal(alice.dialogs.length, 1, 'the restore asked for confirmation once')
  assert.match(alice.dialogs[0], new RegExp(`Restore version #${savedId}\\?`))
  assert.deepEqual(navigations, { alice: 0, bob: 0 }, 'no page reloaded')

  // The list shows the restore (newest first) and the version kept before it.
  const restoreEntry = `#versions .version[data-restored-from="${savedId}"]`
  await waitFor(async () => (await alice.locator(restoreEntry).count()) === 1, 'the restore entry in Alice\'s list')
  const ids = await versionIds(alice)
  const restoredId = Number(await alice.locator(restoreEntry).getAttribute('data-version-id'))
  assert.equal(ids[0], restoredId, `the restore is the newest version: ${JSON.stringify(ids)}`)
  assert.ok(ids.includes(savedId), `the restored version is still listed: ${JSON.stringify(ids)}`)
  assert.match(await alice.locator(restoreEntry).textContent(), new RegExp(`restored from #${savedId}`))
  const beforeId = Number(/^Restored #\d+\. The text before is kept as #(\d+)\.$/.exec(await alice.locator('#versions-note').textContent())?.[1])
  assert.equal(ids[1], beforeId, `the text before the restore is the next version: ${JSON.stringify(ids)}`)
  // Bob's list catches up by itself (it refreshes every ~10 s).
  await waitFor(async () => (await bob.locator(restoreEntry).count()) === 1, 'the restore entry in Bob\'s list', 15_000)

  // The restore is an ordinary edit: writing on works for both.
  await typeAtEnd(bob, '\n- Bob: after the restore')
  await waitFor(async () => (await editorText(alice)) === `${saved}\n- Bob: after the restore`, 'Alice to see Bob write after the restore')

  await delay(200)
  await fs.promises.writeFile(path.join(ARTIFACTS, 'versions.png'), await alice.screenshot())
  await fs.promises.writeFile(path.join(ARTIFACTS, 'versions-panel.png'), await alice.locator('#versions-panel').screenshot())

  // On a phone the panel fits the width.
  const phone = await open(room, { viewport: { width: 375, height: 740 }, mobile: true })
  await waitConnected(phone)
  await waitFor(async () => (await phone.locator(restoreEntry).count()) === 1, 'the phone to list the versions')
  await assertFitsWidth(phone)
  await fs.promises.writeFile(path.join(ARTIFACTS, 'versions-phone-375.png'), await phone.screenshot({ fullPage: true }))

  for (const page of [alice, bob, phone]) assertNoProblems(page)
})

test('versions: the page token goes along as a bearer token; without admin rights the panel says so', async () => {
  const room = uniqueRoom('guarded')
  const page = await openPage(browser, server)
  pages.push(page)
  const authorizations = []
  // Pretend the server has auth on and this token is not an admin's.
  await page.route('**/api/**', route => {
    authorizations.push(route.request().headers().authorization)
    return route.fulfill({ status: 403, contentType: 'application/json', body: '{"error":"an admin token is needed"}' })
  })
  await page.goto(`${server.url}/?room=${encodeURIComponent(room)}&token=s3cret`)
  await waitConnected(page)
  await waitFor(async () => (await versionsHint(page)) === 'Versions need an admin token.',
    async () => `the admin-token hint, saw ${JSON.stringify(await versionsHint(page))}`)
  assert.ok(authorizations.length >= 1 && authorizations.every(a => a === 'Bearer s3cret'), JSON.stringify(authorizations))
  assert.equal(await page.locator('#save-version').isVisible(), false)
  assert.equal(await page.locator('#versions .version').count(), 0)
  await fs.promises.writeFile(path.join(ARTIFACTS, 'versions-no-admin.png'), await page.locator('#versions-panel').screenshot())
  // The browser logs the refused request itself; nothing else may go wrong.
  assert.deepEqual(page.problems.filter(p => !/status of 403/.test(p)), [])
})

test('an edit the server refuses as too large stops the reconnect loop and says why', async () => {
  const strict = await startServer(['--max-doc-size', '64KiB'])
  try {
    const room = uniqueRoom('too-large')
    const page = await openPage(browser, strict)
    pages.push(page)
    page.sockets = []
    page.on('websocket', ws => page.sockets.push(ws.url()))
    await page.goto(`${strict.url}/?room=${encodeURIComponent(room)}`)
    await page.locator('.cm-content').waitFor()
    await waitConnected(page)
    await page.evaluate(() => {
      const { view } = window.crdtHub
      view.dispatch({ changes: { from: 0, insert: 'x'.repeat(100 * 1024) } })
    })
    await waitFor(async () => (await statusPhase(page)) === 'refused',
      async () => `"Refused", status is "${await statusText(page)}"`)
    const note = await page.locator('#sync-note').textContent()
    assert.match(note, /refused your last edit/)
    assert.match(note, /document size limit/)
    // No loop of reconnects and re-uploads.
    const sockets = page.sockets.length
    await delay(3000)
    assert.equal(page.sockets.length, sockets, 'the page kept reconnecting')
    assert.equal(await page.locator('#toggle-online').textContent(), 'Try again')
    assert.equal((await editorText(page)).length, 100 * 1024, 'the edit stays in the editor')
    await fs.promises.writeFile(path.join(ARTIFACTS, 'refused-too-large.png'), await page.screenshot())
  } finally {
    await strict.stop()
  }
})

test('an expired token is refreshed from the page\'s tokenUrl, or the page says access expired', async () => {
  const secret = 'browser-secret-0123456789'
  const mint = (room, ttl) => execFileSync(SERVER_BIN,
    ['token', '--auth-secret', secret, '--room', room, '--role', 'write', '--ttl', ttl, '--sub', 'browser'],
    { encoding: 'utf8' }).trim()
  const guarded = await startServer(['--auth-secret', secret, '--auth-leeway', '0s'])
  try {
    const room = uniqueRoom('refresh')
    const page = await openPage(browser, guarded)
    pages.push(page)
    let handedOut = 0
    // The embedding app's endpoint, as the demo would call it.
    await page.route('**/fresh-token', route => {
      handedOut += 1
      return route.fulfill({ status: 200, contentType: 'text/plain', body: mint(room, '1h') })
    })
    const tokenUrl = `${guarded.url}/fresh-token`
    await page.goto(`${guarded.url}/?room=${encodeURIComponent(room)}&token=${mint(room, '3s')}&tokenUrl=${encodeURIComponent(tokenUrl)}`)
    await page.locator('.cm-content').waitFor()
    await waitConnected(page)
    await waitFor(async () => handedOut === 1, async () => 'no fresh token was fetched after expiry', 20_000)
    await waitConnected(page)
    await typeAtEnd(page, 'after the refresh')
    const admin = execFileSync(SERVER_BIN,
      ['token', '--auth-secret', secret, '--room', '**', '--role', 'admin'], { encoding: 'utf8' }).trim()
    await waitFor(async () => {
      const response = await fetch(`${guarded.url}/api/rooms/${encodeURIComponent(room)}/json`,
        { headers: { authorization: `Bearer ${admin}` } })
      return response.ok && JSON.stringify(await response.json()).includes('after the refresh')
    }, async () => 'the edit after the refresh never reached the server')

    // Without a tokenUrl: no loop of reconnects, and the page says why.
    const stale = await openPage(browser, guarded)
    pages.push(stale)
    stale.sockets = []
    stale.on('websocket', ws => stale.sockets.push(ws.url()))
    await stale.goto(`${guarded.url}/?room=${encodeURIComponent(room)}&token=${mint(room, '3s')}`)
    await waitConnected(stale)
    await waitFor(async () => (await statusPhase(stale)) === 'refused',
      async () => `"Refused", status is "${await statusText(stale)}"`, 20_000)
    assert.match(await stale.locator('#sync-note').textContent(), /access expired/)
    const sockets = stale.sockets.length
    await delay(2000)
    assert.equal(stale.sockets.length, sockets, 'the page kept reconnecting with its expired token')
  } finally {
    await guarded.stop()
  }
})

test('with acks (?acks=1), the status says "Saving…" until the server stored the edit, then "Saved"', async t => {
  // Updates reach the database once a second: "Saved" any sooner would
  // be a lie that the crash below shows.
  const crashing = await startServer(['--flush-interval', '1s'])
  let reopened = null
  try {
    const room = uniqueRoom('acks')
    const page = await openPage(browser, crashing)
    pages.push(page)
    await page.goto(`${crashing.url}/?room=${encodeURIComponent(room)}`)
    await page.locator('.cm-content').waitFor()
    await waitConnected(page)
    await delay(1500) // the first ack, for the handshake, if any
    const statusLog = await recordStatus(page)
    await typeAtEnd(page, 'Stored before the crash')
    const acks = () => page.evaluate(() => window.crdtHub.connection.acksSeen)
    try {
      await waitFor(acks, 'a first ack (message type 100)', 5_000)
    } catch {
      // A server without `?acks=1` ignores the parameter: the page keeps
      // its old status ("Connected"), which the other tests check.
      assert.equal(await statusText(page), 'Connected')
      t.skip('this crdt-hub binary sends no acks (?acks=1) yet: "Saved" not checked')
      return
    }
    await waitFor(async () => (await statusText(page)) === 'Saved',
      async () => `"Saved", status is "${await statusText(page)}"`)
    assert.equal(await page.locator('#status').getAttribute('data-saved'), 'saved')
    const log = await statusLog()
    assert.equal(log.at(-1), 'Saved')
    assert.ok(log.includes('Saving…'), `"Saving…" while the edit waited for the database: ${JSON.stringify(log)}`)
    // A deletion alone advances no clock: it is "Saving…" until the next ack.
    const deleted = await recordStatus(page)
    await page.keyboard.press('Backspace')
    await waitFor(async () => (await statusText(page)) === 'Saved', 'the deletion to be saved')
    assert.deepEqual(await deleted(), ['Saved', 'Saving…', 'Saved'])
    await typeAtEnd(page, 'h')
    await waitFor(async () => (await statusText(page)) === 'Saved', 'the retyped letter to be saved')

    // "Saved" means stored: a server killed at once keeps the edit.
    await crashing.crash()
    await waitFor(async () => (await statusPhase(page)) === 'offline', 'the page to notice the crash')
    // Offline, edits are counted as unsaved until a server stored them.
    await typeAtEnd(page, '!')
    await waitFor(async () => /^(Offline|Reconnecting…) — 1 unsaved edit$/.test(await statusText(page)),
      async () => `one unsaved edit, status is "${await statusText(page)}"`)
    reopened = await startServer([], { dir: crashing.dir })
    const stored = await fetch(`${reopened.url}/api/rooms/${encodeURIComponent(room)}/json`)
    assert.match(JSON.stringify(await stored.json()), /Stored before the crash/)
    // Chromium logs each refused reconnect while the server is down.
    assert.deepEqual(page.problems.filter(p => !/WebSocket connection to .* failed/.test(p)), [])
  } finally {
    await reopened?.stop()
    await crashing.stop()
  }
})
