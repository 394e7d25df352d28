// Who this browser is to the other peers: a display name and a colour,
// kept in localStorage so a reload (or another room) keeps the same
// identity. Published through awareness as `user`, the field
// y-codemirror.next's remote selections read ({ name, color, colorLight }).

const NAME_KEY = 'crdt-hub:name'
const COLOR_KEY = 'crdt-hub:color'

/** Colours that stay readable as white-on-colour labels and as carets. */
export const PALETTE = ['#2563eb', '#db2777', '#16a34a', '#ea580c', '#7c3aed', '#0891b2', '#a16207']

const ADJECTIVES = ['Brave', 'Calm', 'Clever', 'Curious', 'Gentle', 'Happy', 'Kind', 'Lucky', 'Quick', 'Quiet', 'Sunny', 'Witty']
const ANIMALS = ['Badger', 'Falcon', 'Fox', 'Heron', 'Lynx', 'Marten', 'Otter', 'Owl', 'Panda', 'Robin', 'Seal', 'Wren']

/** The longest name we publish; labels over the text stay short. */
export const MAX_NAME_LENGTH = 32

function randomInt (n) {
  const buf = new Uint32Array(1)
  crypto.getRandomValues(buf)
  return buf[0] % n
}

function pick (list) {
  return list[randomInt(list.length)]
}

function storage () {
  // localStorage throws in some privacy modes; the page still works without it.
  try {
    return window.localStorage
  } catch {
    return null
  }
}

/** A trimmed, length-capped name, or '' when nothing usable is left. */
export function cleanName (raw) {
  return String(raw ?? '').replace(/\s+/g, ' ').trim().slice(0, MAX_NAME_LENGTH)
}

/** `#rrggbb` → the same colour at 20 % opacity, for selection backgrounds. */
export function lighten (color) {
  return /^#[0-9a-f]{6}$/i.test(color) ? color + '33' : color
}

/** This browser's identity: stored, or made up once and stored. */
export function loadIdentity () {
  const store = storage()
  let name = cleanName(store?.getItem(NAME_KEY))
  if (!name) {
    name = `${pick(ADJECTIVES)} ${pick(ANIMALS)}`
    store?.setItem(NAME_KEY, name)
  }
  let color = store?.getItem(COLOR_KEY)
  if (!PALETTE.includes(color)) {
    color = pick(PALETTE)
    store?.setItem(COLOR_KEY, color)
  }
  return { name, color, colorLight: lighten(color) }
}

/** Remembers a new name for next time; returns the cleaned name ('' if unusable). */
export function saveName (raw) {
  const name = cleanName(raw)
  if (name) storage()?.setItem(NAME_KEY, name)
  return name
}

/** Up to two initials for an avatar: "Curious Otter" → "CO". */
export function initials (name) {
  const words = cleanName(name).split(' ').filter(Boolean)
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words
  return letters.map(w => Array.from(w)[0]).join('').toUpperCase() || '?'
}

/**
 * Keeps carets tellable apart: when another peer in the room already shows
 * our colour, the one that joined later (higher client id, so exactly one
 * of the two) switches to a colour nobody uses, for this session only.
 *
 * @param {import('y-protocols/awareness').Awareness} awareness
 * @param {{ name: string, color: string, colorLight: string }} identity updated in place
 */
export function avoidColorClashes (awareness, identity) {
  awareness.on('change', () => {
    const others = [...awareness.getStates()]
      .filter(([id, state]) => id !== awareness.clientID && state?.user)
    const clash = others.some(([id, state]) => state.user.color === identity.color && id < awareness.clientID)
    if (!clash) return
    const taken = new Set(others.map(([, state]) => state.user.color))
    const free = PALETTE.filter(color => !taken.has(color))
    if (free.length === 0) return
    identity.color = pick(free)
    identity.colorLight = lighten(identity.color)
    awareness.setLocalStateField('user', { ...identity })
  })
}
