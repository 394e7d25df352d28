// The editor: CodeMirror 6 bound to a Y.Text by y-codemirror.next, which
// also draws the other peers' carets and selections from awareness.

import { EditorState } from '@codemirror/state'
import {
  EditorView, keymap, drawSelection, placeholder, highlightSpecialChars
} from '@codemirror/view'
import { defaultKeymap } from '@codemirror/commands'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import * as Y from 'yjs'

// y-codemirror.next's own theme hides a peer's name until the caret is
// hovered and sets it in a serif face; here the name is always shown.
const theme = EditorView.theme({
  '&': { height: '100%', fontSize: '16px' },
  '&.cm-focused': { outline: 'none' },
  '.cm-scroller': {
    fontFamily: 'inherit',
    lineHeight: '1.65',
    overflow: 'auto'
  },
  '.cm-content': { padding: '28px 0 40px', caretColor: 'var(--ink)' },
  '.cm-line': { padding: '0 28px' },
  '.cm-placeholder': { color: 'var(--muted)' },
  '&.cm-focused .cm-selectionBackground, .cm-selectionBackground, ::selection': {
    backgroundColor: 'var(--selection) !important'
  },
  '.cm-ySelectionCaret': { borderLeftWidth: '2px', marginLeft: '-1px', marginRight: '-1px' },
  '.cm-ySelectionCaretDot': { display: 'none' },
  '.cm-ySelectionInfo': {
    opacity: '1',
    top: '-1.45em',
    left: '-2px',
    padding: '1px 6px',
    borderRadius: '4px 4px 4px 0',
    fontFamily: 'inherit',
    fontSize: '12px',
    fontWeight: '600',
    lineHeight: '1.4',
    letterSpacing: '.01em',
    pointerEvents: 'none'
  }
})

// CodeMirror's default keys, with undo/redo through Y.UndoManager so they
// only undo your own edits, never a peer's. Tab is left to move focus
// (keyboard users can leave the editor).
const KEYMAP = [...yUndoManagerKeymap, ...defaultKeymap]

/**
 * Mounts an editor for `text` into `parent`.
 *
 * @param {HTMLElement} parent
 * @param {Y.Text} text
 * @param {import('y-protocols/awareness').Awareness} awareness
 * @returns {EditorView}
 */
export function createEditor (parent, text, awareness) {
  const undoManager = new Y.UndoManager(text)
  const state = EditorState.create({
    doc: text.toString(),
    extensions: [
      keymap.of(KEYMAP),
      drawSelection(),
      highlightSpecialChars(),
      EditorView.lineWrapping,
      placeholder('Start typing — everyone in this room sees it as you write.'),
      EditorView.contentAttributes.of({ 'aria-label': 'Shared document', spellcheck: 'true' }),
      theme,
      yCollab(text, awareness, { undoManager })
    ]
  })
  return new EditorView({ state, parent })
}
