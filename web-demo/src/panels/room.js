// "Room": the share link with a copy button, and a way to another room.

import { h, panel } from '../dom.js'
import { isValidRoom, randomRoom, roomLink, shareLink } from '../room.js'

/**
 * Copies `text`; falls back to selecting an input when the Clipboard API is
 * missing (plain http on another host is not a secure context).
 */
export async function copyText (text, fallbackInput) {
  try {
    await navigator.clipboard.writeText(text)
    return true
  } catch {
    if (fallbackInput) {
      fallbackInput.focus()
      fallbackInput.select()
      try { return document.execCommand('copy') } catch { return false }
    }
    return false
  }
}

/** Briefly swaps a button's label ("Copied") and restores it. */
export function flash (button, text, ms = 1600) {
  const original = button.dataset.label ?? button.textContent
  button.dataset.label = original
  button.textContent = text
  clearTimeout(button._flashTimer)
  button._flashTimer = setTimeout(() => { button.textContent = original }, ms)
}

/**
 * @param {import('../session.js').Session} session
 * @returns {HTMLElement}
 */
export function roomPanel (session) {
  const { panel: section, body } = panel('room-panel', 'Room')
  const link = shareLink(session.room)

  const linkInput = h('input', { id: 'share-url', type: 'text', readonly: true, value: link, 'aria-label': 'Share link' })
  const copyButton = h('button', { type: 'button', class: 'btn', id: 'copy-link' }, 'Copy')
  copyButton.addEventListener('click', async () => {
    flash(copyButton, (await copyText(link, linkInput)) ? 'Copied' : 'Copy failed')
  })
  linkInput.addEventListener('focus', () => linkInput.select())

  const roomInput = h('input', {
    id: 'room-input',
    type: 'text',
    placeholder: 'Room name',
    autocomplete: 'off',
    spellcheck: 'false',
    'aria-label': 'Room to open'
  })
  const form = h('form', { class: 'input-row', id: 'room-form' },
    roomInput,
    h('button', { type: 'submit', class: 'btn' }, 'Open'))
  form.addEventListener('submit', e => {
    e.preventDefault()
    const room = roomInput.value.trim()
    if (!isValidRoom(room)) {
      roomInput.setCustomValidity('1–256 bytes, no control characters')
      roomInput.reportValidity()
      return
    }
    window.location.assign(roomLink(room, session.token))
  })
  roomInput.addEventListener('input', () => roomInput.setCustomValidity(''))

  const fresh = h('button', { type: 'button', class: 'link-button', id: 'new-room' }, 'Start a new room')
  fresh.addEventListener('click', () => window.location.assign(roomLink(randomRoom(), session.token)))

  body.append(
    h('label', { class: 'field-label', for: 'share-url' }, 'Invite people with this link'),
    h('div', { class: 'input-row' }, linkInput, copyButton),
    h('label', { class: 'field-label', for: 'room-input' }, 'Switch room'),
    form,
    fresh
  )
  return section
}
