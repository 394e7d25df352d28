// A tiny element builder: enough for a handful of panels, no framework.

/**
 * h('button', { class: 'btn', onclick: fn }, 'Copy') → <button class="btn">Copy</button>
 *
 * @param {string} tag
 * @param {Record<string, any> | null} [attrs] `on…` keys become listeners
 * @param {...(Node | string | null | false | undefined)} children
 * @returns {HTMLElement}
 */
export function h (tag, attrs, ...children) {
  const el = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value == null || value === false) continue
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value)
    else if (key === 'style' && typeof value === 'object') Object.assign(el.style, value)
    else el.setAttribute(key, value === true ? '' : String(value))
  }
  for (const child of children) {
    if (child == null || child === false) continue
    el.append(child)
  }
  return el
}

/** A sidebar panel: a titled section. Returns `{ panel, body, title }`. */
export function panel (id, titleText) {
  const title = h('h2', { class: 'panel-title' }, titleText)
  const body = h('div', { class: 'panel-body' })
  const section = h('section', { class: 'panel', id, 'aria-label': titleText }, title, body)
  return { panel: section, body, title }
}
