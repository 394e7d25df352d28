// The line under the editor: what happens to your edits right now, and how
// long the document is.

import { REFUSED_CONTENT, TOKEN_EXPIRED } from './connection.js'

const NOTES = {
  connecting: 'Connecting to the server…',
  syncing: 'Catching up with the room…',
  connected: 'Changes sync live to everyone here.',
  offline: 'Working offline: edits are kept here and merge when you reconnect.',
  refused: 'The server closed the connection for good (check the link or its token). Your edits are kept here.'
}

/** Words in `text`: runs of letters or digits (any script). */
export function countWords (text) {
  return text.match(/[\p{L}\p{N}]+(?:['’-][\p{L}\p{N}]+)*/gu)?.length ?? 0
}

/**
 * @param {HTMLElement} root
 * @param {import('./session.js').Session} session
 */
export function mountFooter (root, session) {
  const note = root.querySelector('#sync-note')
  const words = root.querySelector('#word-count')
  session.connection.subscribe(({ phase, refusal }) => {
    note.textContent = phase === 'refused' && REFUSED_CONTENT.has(refusal?.code)
      ? `The server refused your last edit${refusal.reason ? ` (${refusal.reason})` : ''}. It is kept here, unsent: undo it, then press “Try again”.`
      : phase === 'refused' && refusal?.code === TOKEN_EXPIRED
        ? 'Your access expired: open the link again with a fresh token. Your edits are kept here.'
        : NOTES[phase] + (refusal?.reason ? ` Reason: ${refusal.reason}` : '')
  })
  let scheduled = false
  const update = () => {
    scheduled = false
    const n = countWords(session.text.toString())
    words.textContent = `${n} word${n === 1 ? '' : 's'}`
  }
  // Counted at most once a frame, however fast edits arrive.
  session.text.observe(() => {
    if (!scheduled) {
      scheduled = true
      requestAnimationFrame(update)
    }
  })
  update()
}
