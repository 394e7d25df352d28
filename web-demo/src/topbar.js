// The bar above the editor: the room's name, the connection status (with
// unsent edits), the online/offline switch and the share button.

import { shareLink } from './room.js'
import { copyText, flash } from './panels/room.js'

const LABELS = {
  connecting: 'Connecting…',
  syncing: 'Syncing…',
  connected: 'Connected',
  offline: 'Offline',
  refused: 'Refused by the server'
}

function plural (n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

/**
 * What the status badge says, e.g. "Offline · 3 unsent edits" or
 * "Reconnecting… · 1 unsent edit". Once the server acknowledges durable
 * writes (`?acks=1`, `saved` not null): "Saved" or "Saving…" while
 * connected, and "Offline — 3 unsaved edits" while not, counting the
 * local updates the server has not confirmed as stored.
 */
export function describeStatus ({ phase, unsent, unsaved = 0, saved = null, wantOnline }) {
  if (saved !== null) {
    if (phase === 'connected') return saved === 'saved' ? 'Saved' : 'Saving…'
    if (phase === 'offline') {
      const label = wantOnline ? 'Reconnecting…' : 'Offline'
      return unsaved > 0 ? `${label} — ${plural(unsaved, 'unsaved edit')}` : label
    }
  }
  // Offline against your will: y-websocket keeps retrying with backoff.
  let text = phase === 'offline' && wantOnline ? 'Reconnecting…' : LABELS[phase]
  if (phase !== 'connected' && unsent > 0) text += ` · ${plural(unsent, 'unsent edit')}`
  return text
}

/**
 * @param {HTMLElement} root the <header>
 * @param {import('./session.js').Session} session
 */
export function mountTopbar (root, session) {
  const roomName = root.querySelector('#room-name')
  roomName.textContent = session.room
  roomName.title = session.room

  const badge = root.querySelector('#status')
  const badgeText = badge.querySelector('.status-text')
  const toggle = root.querySelector('#toggle-online')
  const share = root.querySelector('#share')

  session.connection.subscribe(status => {
    badge.dataset.state = status.phase
    if (status.saved) badge.dataset.saved = status.saved
    else delete badge.dataset.saved
    badgeText.textContent = describeStatus(status)
    badge.title = status.refusal
      ? `Closed with code ${status.refusal.code}${status.refusal.reason ? `: ${status.refusal.reason}` : ''}`
      : status.phase === 'offline' && (status.unsent > 0 || status.unsaved > 0)
        ? 'Your edits are kept here and merge when you are back online.'
        : status.saved === 'saved' && status.phase === 'connected'
          ? 'Every edit of yours is stored on the server.'
          : ''
    toggle.textContent = status.wantOnline ? 'Go offline' : status.refusal ? 'Try again' : 'Go online'
    toggle.setAttribute('aria-pressed', String(!status.wantOnline))
    document.body.dataset.connection = status.phase
  })
  toggle.addEventListener('click', () => {
    if (session.connection.status.wantOnline) session.connection.goOffline()
    else session.connection.goOnline()
  })
  share.addEventListener('click', async () => {
    const input = document.getElementById('share-url')
    flash(share, (await copyText(shareLink(session.room), input)) ? 'Link copied' : 'Copy failed')
  })
}
