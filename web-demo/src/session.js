// One page = one session: the room from the URL, its Y.Doc, the connection
// to crdt-hub, this browser's identity and the editor. Panels receive the
// session and read what they need from it.

import * as Y from 'yjs'
import { Connection } from './connection.js'
import { createEditor } from './editor.js'
import { avoidColorClashes, loadIdentity } from './identity.js'
import { roomFromLocation, serverUrl } from './room.js'

/**
 * @typedef {object} Session
 * @property {string} room
 * @property {string | null} token
 * @property {Y.Doc} doc
 * @property {Y.Text} text       the shared document
 * @property {Connection} connection
 * @property {import('y-protocols/awareness').Awareness} awareness
 * @property {{ name: string, color: string, colorLight: string }} identity
 * @property {import('@codemirror/view').EditorView} view
 */

/** The name of the shared text in every room's document. */
export const TEXT_NAME = 'codemirror'

/**
 * @param {HTMLElement} editorParent
 * @returns {Session}
 */
export function startSession (editorParent) {
  const { room, token, tokenUrl } = roomFromLocation()
  const doc = new Y.Doc()
  const text = doc.getText(TEXT_NAME)
  // y-websocket appends the room to the URL as it is; the server
  // percent-decodes the path, so any name (spaces, '?', '/') arrives intact.
  const connection = new Connection(serverUrl(), encodeURIComponent(room), doc, { token, tokenUrl })
  const awareness = connection.awareness
  const identity = loadIdentity()
  awareness.setLocalStateField('user', { ...identity })
  avoidColorClashes(awareness, identity)
  const view = createEditor(editorParent, text, awareness)
  return { room, token, doc, text, connection, awareness, identity, view }
}
