// The rich-text page at `/rich?room=NAME`: Tiptap (ProseMirror) bound to
// the room's Y.Doc, synced with @hocuspocus/provider against crdt-hub's
// Hocuspocus endpoint (`ws(s)://host/`, the room as the document name),
// with everyone's caret and name (Tiptap's CollaborationCaret).
//
// The status is honest about durability: crdt-hub confirms a Hocuspocus
// update only once it is stored, so the provider's `unsyncedChanges`
// reaching 0 means "Saved".

import './rich.css'
import * as Y from 'yjs'
import { HocuspocusProvider } from '@hocuspocus/provider'
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { avoidColorClashes, initials, loadIdentity } from '../identity.js'
import { roomFromLocation, serverUrl } from '../room.js'
import { copyText, flash } from '../panels/room.js'
import { mountToolbar } from './toolbar.js'
import { describeRichStatus } from './status.js'

/** The Y.XmlFragment Tiptap's Collaboration extension edits (its default). */
export const FRAGMENT_NAME = 'default'

const { room, token } = roomFromLocation()
document.title = `${room} · rich text · crdt-hub`

const roomName = document.getElementById('room-name')
roomName.textContent = room
roomName.title = room
const badge = document.getElementById('status')
const badgeText = badge.querySelector('.status-text')
const toggle = document.getElementById('toggle-online')
const share = document.getElementById('share')
const note = document.getElementById('sync-note')
const people = document.getElementById('people')

const doc = new Y.Doc()
const identity = loadIdentity()

const state = { socket: 'connecting', everConnected: false, refused: null, readOnly: false }
// The provider emits its first events while its constructor runs, before
// `provider` is assigned: draw on the next microtask.
const later = draw => () => queueMicrotask(draw)

const provider = new HocuspocusProvider({
  // No room in the path: Hocuspocus names the document in every message.
  url: `${serverUrl()}/`,
  name: room,
  document: doc,
  // The page's `?token=` (a JWT when the server has auth on); '' otherwise.
  token: token ?? '',
  onStatus: ({ status }) => {
    state.socket = status
    if (status === 'connected') state.everConnected = true
    if (status !== 'connecting') queueMicrotask(forgetPeers)
    later(render)()
  },
  onSynced: later(render),
  onUnsyncedChanges: later(render),
  onAuthenticated: ({ scope }) => {
    state.refused = null
    // A read-only token: the server would refuse our edits, so the
    // editor does not take any.
    state.readOnly = scope === 'readonly'
    queueMicrotask(() => editor.setEditable(!state.readOnly))
    later(render)()
  },
  onAuthenticationFailed: ({ reason }) => {
    state.refused = reason || 'permission denied'
    later(render)()
  },
  onAwarenessChange: later(renderPeople)
})
const awareness = provider.awareness

/**
 * On a lost connection the provider drops the other peers' awareness
 * states but keeps their clocks; on reconnect the server sends the same
 * states with the same clocks, which awareness ignores as old news, so the
 * peers would stay invisible until they next move their caret. Forgetting
 * the clocks of peers we no longer show lets the server's copy in (the
 * plain page's Connection.forgetPeers does the same for y-websocket).
 */
function forgetPeers () {
  for (const clientId of [...awareness.meta.keys()]) {
    if (clientId !== awareness.clientID && !awareness.states.has(clientId)) awareness.meta.delete(clientId)
  }
}
avoidColorClashes(awareness, identity)

const editor = new Editor({
  element: document.getElementById('editor'),
  extensions: [
    // Collaboration brings its own undo (only your own edits).
    StarterKit.configure({ undoRedo: false }),
    Collaboration.configure({ document: doc, field: FRAGMENT_NAME }),
    // Publishes `user` ({ name, color, colorLight }) in awareness; when
    // avoidColorClashes later picks another colour it updates that field,
    // which is what the other peers draw.
    CollaborationCaret.configure({ provider, user: { ...identity } })
  ],
  editorProps: {
    attributes: { 'aria-label': 'Shared rich-text document', spellcheck: 'true' }
  }
})
mountToolbar(document.getElementById('toolbar'), editor)

// ---- Top bar --------------------------------------------------------------

const wantOnline = () => provider.configuration.websocketProvider.shouldConnect

function currentStatus () {
  return describeRichStatus({
    socket: state.socket,
    synced: provider.synced,
    unsynced: provider.unsyncedChanges,
    everConnected: state.everConnected,
    refused: state.refused,
    readOnly: state.readOnly
  })
}

const NOTES = {
  connecting: 'Connecting to the server…',
  syncing: 'Catching up with the room…',
  saving: 'Sending your edits to the server…',
  saved: 'Every edit of yours is stored on the server.',
  readonly: 'Read-only: your token lets you read this room, not write to it.',
  offline: 'Offline: your edits are kept here and merge when you are back online.',
  refused: 'The server refused this page.'
}

function render () {
  const { phase, text } = currentStatus()
  badge.dataset.state = phase
  badgeText.textContent = text
  badge.title = phase === 'offline' && wantOnline() ? 'Reconnecting…' : ''
  note.textContent = NOTES[phase] + (phase === 'refused' && state.refused ? ` Reason: ${state.refused}` : '')
  toggle.textContent = wantOnline() ? 'Go offline' : 'Go online'
  toggle.setAttribute('aria-pressed', String(!wantOnline()))
  document.body.dataset.connection = ['saving', 'saved', 'readonly'].includes(phase) ? 'connected' : phase
}

function renderPeople () {
  const others = [...awareness.getStates()]
    .filter(([id, s]) => id !== awareness.clientID && s?.user?.name)
    .map(([, s]) => s.user)
  people.replaceChildren(...[{ ...identity, you: true }, ...others].map(user => {
    const dot = document.createElement('span')
    dot.className = 'avatar avatar-small'
    dot.style.backgroundColor = user.color
    dot.textContent = initials(user.name)
    dot.title = user.you ? `${user.name} (you)` : user.name
    return dot
  }))
}

toggle.addEventListener('click', () => {
  if (wantOnline()) provider.disconnect()
  else provider.connect()
  render()
})
share.addEventListener('click', async () => {
  const url = new URL('/rich', window.location.href)
  url.searchParams.set('room', room)
  const input = document.getElementById('share-url')
  input.value = url.href
  flash(share, (await copyText(url.href, input)) ? 'Link copied' : 'Copy failed')
})

// Leaving with edits the server has not stored would lose them.
window.addEventListener('beforeunload', event => {
  if (provider.unsyncedChanges > 0) event.preventDefault()
})

render()
renderPeople()

// A handle for the browser console (and end-to-end tests).
window.crdtHub = { room, doc, provider, editor, awareness, identity, status: currentStatus }
