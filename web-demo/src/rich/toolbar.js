// A small formatting toolbar for the rich page: each button runs a Tiptap
// command and shows whether its mark or node is active at the selection.

import { h } from '../dom.js'

/** [label, title, run, isActive] */
const BUTTONS = [
  ['B', 'Bold (Ctrl+B)', e => e.chain().focus().toggleBold().run(), e => e.isActive('bold')],
  ['I', 'Italic (Ctrl+I)', e => e.chain().focus().toggleItalic().run(), e => e.isActive('italic')],
  ['H1', 'Heading 1', e => e.chain().focus().toggleHeading({ level: 1 }).run(), e => e.isActive('heading', { level: 1 })],
  ['H2', 'Heading 2', e => e.chain().focus().toggleHeading({ level: 2 }).run(), e => e.isActive('heading', { level: 2 })],
  ['• List', 'Bullet list', e => e.chain().focus().toggleBulletList().run(), e => e.isActive('bulletList')],
  ['1. List', 'Numbered list', e => e.chain().focus().toggleOrderedList().run(), e => e.isActive('orderedList')],
  ['Quote', 'Quote', e => e.chain().focus().toggleBlockquote().run(), e => e.isActive('blockquote')],
  ['Undo', 'Undo your last edit (Ctrl+Z)', e => e.chain().focus().undo().run(), () => false],
  ['Redo', 'Redo (Ctrl+Shift+Z)', e => e.chain().focus().redo().run(), () => false]
]

/**
 * @param {HTMLElement} root
 * @param {import('@tiptap/core').Editor} editor
 */
export function mountToolbar (root, editor) {
  const buttons = BUTTONS.map(([label, title, run, isActive]) => {
    const button = h('button', {
      type: 'button',
      class: 'tool',
      title,
      'aria-label': title,
      // Keep the editor's selection: act on mousedown's default.
      onmousedown: event => event.preventDefault(),
      onclick: () => run(editor)
    }, label)
    return { button, isActive }
  })
  root.append(...buttons.map(b => b.button))
  const update = () => {
    for (const { button, isActive } of buttons) button.setAttribute('aria-pressed', String(isActive(editor)))
  }
  editor.on('transaction', update)
  update()
}
