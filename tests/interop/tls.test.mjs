// wss:// with the real clients: `--tls-cert`/`--tls-key`, a CA made here
// with openssl, and y-websocket's WebsocketProvider and Tiptap's
// @hocuspocus/provider (v3 and v4) trusting it. The document is big enough
// (1 MB) that the server sends it in several fragments, written to rustls
// past tungstenite's buffer; every client must still get all of it, and
// edits flow both ways between the two protocols.

import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { test } from 'node:test'

import * as hp3 from 'hp3'
import * as hp4 from 'hp4'

import { WebSocket, Y, uniqueRoom, useScope, waitFor } from './harness.mjs'

const DOCUMENT_CHARS = 1_000_000

/**
 * A CA and a certificate it signed for localhost and 127.0.0.1, in `dir`.
 * Returns the paths of the server's certificate and key, and the CA's PEM.
 */
function makePki (dir) {
  const file = name => path.join(dir, name)
  const openssl = args => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] })
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
  openssl(['req', '-x509', ...ec, '-keyout', file('ca.key'), '-out', file('ca.pem'),
    '-days', '2', '-subj', '/CN=crdt-hub interop CA'])
  openssl(['req', ...ec, '-keyout', file('key.pem'), '-out', file('cert.csr'), '-subj', '/CN=localhost'])
  fs.writeFileSync(file('san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n')
  openssl(['x509', '-req', '-in', file('cert.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'),
    '-CAcreateserial', '-out', file('cert.pem'), '-days', '2', '-extfile', file('san.ext')])
  return { cert: file('cert.pem'), key: file('key.pem'), ca: fs.readFileSync(file('ca.pem')) }
}

/** A `ws` WebSocket that trusts `ca`, for the providers' WebSocketPolyfill. */
function trusting (ca) {
  return class extends WebSocket {
    constructor (url, protocols) {
      super(url, protocols, { ca })
    }
  }
}

test('y-websocket and Hocuspocus providers sync a 1 MB document over wss://', async t => {
  const scope = useScope(t)
  const dir = scope.tempDir()
  const pki = makePki(dir)
  const server = await scope.server({ args: ['--tls-cert', pki.cert, '--tls-key', pki.key] })
  const port = server.addr.split(':').pop()
  const secure = { ...server, url: `wss://localhost:${port}` }
  const WebSocketPolyfill = trusting(pki.ca)
  const room = uniqueRoom('tls')

  const writer = await scope.syncedClient(secure, room, { WebSocketPolyfill })
  writer.text().insert(0, 'x'.repeat(DOCUMENT_CHARS))

  const reader = await scope.syncedClient(secure, room, { WebSocketPolyfill })
  await waitFor(() => reader.text().length === DOCUMENT_CHARS, undefined,
    () => `the y-websocket reader has ${reader.text().length} of ${DOCUMENT_CHARS} characters`)

  const tiptaps = [hp3, hp4].map((major, i) => {
    const socket = new major.HocuspocusProviderWebsocket({ url: secure.url, WebSocketPolyfill })
    const doc = new Y.Doc()
    const provider = new major.HocuspocusProvider({ websocketProvider: socket, name: room, document: doc, token: '' })
    provider.attach()
    scope.adopt({
      destroy () {
        try { provider.destroy() } catch {}
        try { socket.destroy() } catch {}
        socket.shouldConnect = false
        doc.destroy()
      }
    })
    return { name: `v${i + 3}`, doc, provider }
  })
  for (const { name, doc } of tiptaps) {
    await waitFor(() => doc.getText('text').length === DOCUMENT_CHARS, undefined,
      () => `the Hocuspocus ${name} provider has ${doc.getText('text').length} of ${DOCUMENT_CHARS} characters`)
  }

  // Both ways: a Hocuspocus edit reaches y-websocket clients and back.
  tiptaps[0].doc.getText('text').insert(0, 'hp:')
  await waitFor(() => reader.text().toString().startsWith('hp:'), undefined,
    () => 'the Hocuspocus edit never reached the y-websocket reader')
  reader.text().insert(0, 'yw:')
  const expected = 'yw:hp:'
  for (const doc of [writer.doc, reader.doc, ...tiptaps.map(c => c.doc)]) {
    await waitFor(() => doc.getText('text').toString().startsWith(expected), undefined,
      () => `a client starts with ${JSON.stringify(doc.getText('text').toString().slice(0, 12))}`)
    assert.equal(doc.getText('text').length, DOCUMENT_CHARS + expected.length)
  }
  assert.deepEqual([...writer.closeEvents, ...reader.closeEvents], [], 'nobody was disconnected')
})
