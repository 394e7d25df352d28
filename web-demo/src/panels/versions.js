// "Versions": the room's saved versions (server snapshots), newest first,
// a button to save one now, and per version a button to restore it. The
// server applies a restore to the live room, so it reaches every open
// editor as an ordinary edit: nothing here reloads. The server saves the
// text as it was just before a restore as a version too, so a restore can
// itself be undone from this list.

import { api, roomPath } from '../api.js'
import { h, panel } from '../dom.js'
import { flash } from './room.js'

/** How often the list is fetched again while the page is visible. */
export const REFRESH_MS = 10_000

/** "312 B", "4.2 KB", "1.3 MB". */
export function formatSize (bytes) {
  if (bytes < 1000) return `${bytes} B`
  if (bytes < 1_000_000) return `${(bytes / 1000).toFixed(bytes < 10_000 ? 1 : 0)} KB`
  return `${(bytes / 1_000_000).toFixed(1)} MB`
}

/** "just now", "5 min ago", "3 h ago", else the local date and time. */
export function formatWhen (date, now = Date.now()) {
  const seconds = Math.round((now - date.getTime()) / 1000)
  if (seconds < 45) return 'just now'
  if (seconds < 3600) return `${Math.max(1, Math.round(seconds / 60))} min ago`
  if (seconds < 6 * 3600) return `${Math.round(seconds / 3600)} h ago`
  return date.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' })
}

/**
 * @param {import('../session.js').Session} session
 * @returns {HTMLElement}
 */
export function versionsPanel (session) {
  const { panel: section, body, title } = panel('versions-panel', 'Versions')
  const count = h('span', { class: 'count', 'data-testid': 'versions-count', hidden: true })
  title.append(count)

  const save = h('button', { type: 'button', class: 'btn', id: 'save-version' }, 'Save version now')
  const note = h('p', { class: 'versions-note', id: 'versions-note', role: 'status', 'aria-live': 'polite' })
  const list = h('ul', { class: 'versions', id: 'versions', 'aria-label': 'Saved versions' })
  const hint = h('p', { class: 'hint', id: 'versions-hint' }, 'Loading versions…')
  body.append(h('div', { class: 'versions-actions' }, save), note, list, hint)

  const path = rest => roomPath(session.room, rest)
  let versions = null // the last list the server sent
  let locked = false // 401/403: this token may not use the API; stop asking
  let busy = false // a save or restore is running
  let timer = null
  let loading = null
  let loadAgain = false

  const say = (text, kind = 'info') => {
    note.textContent = text
    note.dataset.kind = kind
    note.hidden = !text
  }
  say('')

  const connected = () => session.connection.status.phase === 'connected'

  const render = () => {
    const now = Date.now()
    const online = connected()
    const usable = online && !busy && !locked
    save.disabled = !usable
    save.title = locked ? '' : online ? 'Keep the text as it is now as a version' : 'Go online to save a version'
    save.hidden = locked
    section.toggleAttribute('data-locked', locked)
    if (locked) {
      list.replaceChildren()
      hint.textContent = 'Versions need an admin token.'
      hint.hidden = false
      count.hidden = true
      return
    }
    if (versions === null) return // still loading, or the first load failed (see the note)
    count.textContent = String(versions.length)
    count.hidden = versions.length === 0
    hint.textContent = versions.length === 0 ? 'No saved versions yet.' : ''
    hint.hidden = versions.length > 0
    // Re-rendering must not take the keyboard focus off a Restore button.
    const focused = list.contains(document.activeElement) ? document.activeElement.closest('.version')?.dataset.versionId : null
    list.replaceChildren(...versions.map(v => {
      const created = new Date(v.created_at)
      const restore = h('button', {
        type: 'button',
        class: 'btn btn-small version-restore',
        disabled: !usable,
        'aria-label': `Restore version ${v.id}`,
        onclick: () => restoreVersion(v.id)
      }, 'Restore')
      return h('li', { class: 'version', 'data-version-id': v.id, 'data-restored-from': v.restored_from ?? null },
        h('div', { class: 'version-info' },
          h('div', { class: 'version-head' },
            h('span', { class: 'version-id' }, `#${v.id}`),
            h('time', { class: 'version-when', datetime: v.created_at, title: created.toLocaleString() }, formatWhen(created, now))),
          h('div', { class: 'version-meta' },
            formatSize(v.size),
            v.restored_from != null && h('span', { class: 'tag version-restored' }, `restored from #${v.restored_from}`))),
        restore)
    }))
    if (focused != null) list.querySelector(`.version[data-version-id="${focused}"] .version-restore`)?.focus()
  }

  /** Fetches the list; a call while one is running makes it run once more after. */
  const refresh = async () => {
    if (locked) return
    if (loading) {
      loadAgain = true
      return loading
    }
    loading = (async () => {
      try {
        versions = await api(session, 'GET', path('/snapshots'))
        if (note.dataset.kind === 'error') say('')
      } catch (e) {
        if (e.status === 404) {
          versions = [] // nothing stored for this room yet
        } else if (e.unauthorized) {
          locked = true
          stopPolling()
        } else if (versions === null) {
          hint.hidden = true
          say(`Could not load versions (${e.message}).`, 'error')
        }
      } finally {
        loading = null
      }
      render()
    })()
    await loading
    if (loadAgain) {
      loadAgain = false
      await refresh()
    }
  }

  const saveVersion = async () => {
    busy = true
    render()
    try {
      const snapshot = await api(session, 'POST', path('/snapshot'))
      say(`Saved as version #${snapshot.id}.`)
      flash(save, 'Saved')
    } catch (e) {
      if (e.unauthorized) locked = true
      else say(e.status === 404 ? 'Nothing to save yet: write something first.' : `Could not save (${e.message}).`, 'error')
    } finally {
      busy = false
    }
    await refresh()
  }

  const restoreVersion = async id => {
    const ok = window.confirm(`Restore version #${id}?\n\n` +
      'Everyone in this room sees the text change back to it. ' +
      'The text as it is now is saved as a version first, so you can undo this.')
    if (!ok) return
    busy = true
    say(`Restoring #${id}…`)
    render()
    try {
      const result = await api(session, 'POST', path('/restore'), { version: id })
      say(result.changed === false
        ? `The text already matches #${id}.`
        : `Restored #${id}. The text before is kept as #${result.before}.`)
    } catch (e) {
      if (e.unauthorized) locked = true
      else say(`Could not restore #${id} (${e.message}).`, 'error')
    } finally {
      busy = false
    }
    await refresh()
  }

  save.addEventListener('click', saveVersion)

  // Polling: every REFRESH_MS while the page is visible and connected (a
  // connected room is loaded on the server, so the first answer is never a
  // spurious 404), and at once when either becomes true again.
  function stopPolling () {
    clearTimeout(timer)
    timer = null
  }
  const poll = async () => {
    stopPolling()
    if (locked || document.visibilityState !== 'visible' || !connected()) return
    await refresh()
    if (!locked && timer === null) timer = setTimeout(poll, REFRESH_MS)
  }
  document.addEventListener('visibilitychange', poll)
  // The status also changes with every unsent edit: act on the phase only.
  let lastPhase = null
  session.connection.subscribe(({ phase }) => {
    if (phase === lastPhase) return
    lastPhase = phase
    if (phase === 'connected') poll()
    render()
  })
  return section
}
