// Entry point: start the session, then mount the top bar and the sidebar
// panels around the editor. A new panel is one more entry in PANELS: a
// function from the session to an element.

import './styles.css'
import { startSession } from './session.js'
import { mountTopbar } from './topbar.js'
import { mountFooter } from './footer.js'
import { peoplePanel } from './panels/people.js'
import { profilePanel } from './panels/profile.js'
import { roomPanel } from './panels/room.js'
import { versionsPanel } from './panels/versions.js'

const PANELS = [peoplePanel, profilePanel, roomPanel, versionsPanel]

const session = startSession(document.getElementById('editor'))
document.title = `${session.room} · crdt-hub`
mountTopbar(document.getElementById('topbar'), session)
mountFooter(document.querySelector('.editor-footer'), session)
document.getElementById('sidebar').append(...PANELS.map(make => make(session)))

// Leaving with edits the server has not got (or, with acks, not stored)
// would lose them.
window.addEventListener('beforeunload', event => {
  const { connection } = session
  if (connection.unsent > 0 || (connection.acksSeen && connection.saving)) event.preventDefault()
})

// A handle for the browser console (and end-to-end tests).
window.crdtHub = session
