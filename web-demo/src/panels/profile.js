// "You": the name others see beside your cursor. Saved in localStorage and
// published through awareness as you type.

import { h, panel } from '../dom.js'
import { MAX_NAME_LENGTH, cleanName, saveName } from '../identity.js'

/**
 * @param {import('../session.js').Session} session
 * @returns {HTMLElement}
 */
export function profilePanel (session) {
  const { panel: section, body } = panel('profile-panel', 'You')
  const swatch = h('span', { class: 'swatch', style: { backgroundColor: session.identity.color }, 'aria-hidden': 'true' })
  const input = h('input', {
    id: 'name-input',
    type: 'text',
    value: session.identity.name,
    maxlength: MAX_NAME_LENGTH,
    autocomplete: 'nickname',
    spellcheck: 'false',
    'aria-label': 'Your name'
  })
  const publish = () => {
    const name = cleanName(input.value)
    if (!name || name === session.identity.name) return
    session.identity.name = saveName(name)
    session.awareness.setLocalStateField('user', { ...session.identity })
  }
  // The colour can change under us (see avoidColorClashes).
  session.awareness.on('change', () => { swatch.style.backgroundColor = session.identity.color })
  input.addEventListener('input', publish)
  input.addEventListener('change', () => {
    // An emptied field falls back to the last name that was published.
    if (!cleanName(input.value)) input.value = session.identity.name
  })
  input.addEventListener('keydown', e => {
    if (e.key === 'Enter') session.view.focus()
  })
  body.append(
    h('label', { class: 'field-label', for: 'name-input' }, 'Your name'),
    h('div', { class: 'name-row' }, swatch, input)
  )
  return section
}
