// "Here now": everyone whose awareness state reaches us, this page first.

import { h, panel } from '../dom.js'
import { initials } from '../identity.js'

/**
 * @param {import('../session.js').Session} session
 * @returns {HTMLElement}
 */
export function peoplePanel (session) {
  const { panel: section, body, title } = panel('people-panel', 'Here now')
  const count = h('span', { class: 'count', 'data-testid': 'people-count' })
  title.append(count)
  const list = h('ul', { class: 'people', id: 'people' })
  const hint = h('p', { class: 'hint' })
  body.append(list, hint)

  const render = () => {
    const { awareness, connection } = session
    const self = awareness.clientID
    const people = []
    for (const [clientId, state] of awareness.getStates()) {
      if (state?.user?.name) people.push({ clientId, user: state.user, isSelf: clientId === self })
    }
    // Me first, then everyone else by name (stable between renders).
    people.sort((a, b) => (b.isSelf - a.isSelf) || a.user.name.localeCompare(b.user.name) || a.clientId - b.clientId)
    list.replaceChildren(...people.map(({ clientId, user, isSelf }) =>
      h('li', { class: 'person', 'data-client-id': clientId, 'data-self': isSelf },
        h('span', { class: 'avatar', style: { backgroundColor: user.color }, 'aria-hidden': 'true' }, initials(user.name)),
        h('span', { class: 'person-name' }, user.name),
        isSelf && h('span', { class: 'tag' }, 'you')
      )))
    count.textContent = String(people.length)
    const { phase } = connection.status
    hint.textContent = phase === 'offline' || phase === 'refused'
      ? 'You are offline: others appear again when you reconnect.'
      : people.length <= 1 ? 'Nobody else yet. Share the link to write together.' : ''
    hint.hidden = hint.textContent === ''
  }

  session.awareness.on('change', render)
  session.connection.subscribe(render)
  render()
  return section
}
