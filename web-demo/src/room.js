// The room lives in the page URL (`/?room=notes`), so a link is all it
// takes to join. Without one the page makes up a fresh room and writes it
// into the URL, so that a copy of the address bar is already a share link.

const WORDS = ['amber', 'birch', 'cedar', 'coral', 'delta', 'ember', 'fern', 'harbor', 'iris', 'juniper', 'lagoon', 'maple', 'meadow', 'orbit', 'pebble', 'river', 'sage', 'summit', 'tide', 'willow']

/** Room names are what the server accepts: 1–256 UTF-8 bytes, no control characters. */
export function isValidRoom (name) {
  return typeof name === 'string' &&
    name.length > 0 &&
    new TextEncoder().encode(name).length <= 256 &&
    !/[\u0000-\u001f\u007f]/.test(name) // eslint-disable-line no-control-regex
}

/** `river-maple-4k7q`: easy to read aloud, hard to guess. */
export function randomRoom () {
  const buf = new Uint32Array(3)
  crypto.getRandomValues(buf)
  const suffix = buf[2].toString(36).padStart(4, '0').slice(-4)
  return `${WORDS[buf[0] % WORDS.length]}-${WORDS[buf[1] % WORDS.length]}-${suffix}`
}

/**
 * Reads `room` and `token` from the page URL. A missing or unusable room is
 * replaced by a random one, in place (history.replaceState: no extra
 * history entry, no reload).
 */
export function roomFromLocation (location = window.location) {
  const url = new URL(location.href)
  let room = (url.searchParams.get('room') ?? '').trim()
  if (!isValidRoom(room)) {
    room = randomRoom()
    url.searchParams.set('room', room)
    window.history.replaceState(null, '', url)
  }
  const token = url.searchParams.get('token') || null
  // An endpoint of the embedding app that answers a fresh token as text
  // (used when the server closes the session because the token expired).
  const tokenUrl = url.searchParams.get('tokenUrl') || null
  return { room, token, tokenUrl }
}

/**
 * The link to send to someone else. The token is left out on purpose: it
 * is this person's credential, and the other person brings their own.
 */
export function shareLink (room, location = window.location) {
  const url = new URL('/', location.href)
  url.searchParams.set('room', room)
  return url.href
}

/** The address of another room, keeping this page's token. */
export function roomLink (room, token, location = window.location) {
  const url = new URL('/', location.href)
  url.searchParams.set('room', room)
  if (token) url.searchParams.set('token', token)
  return url.href
}

/** The WebSocket base URL of the server that served this page. */
export function serverUrl (location = window.location) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`
}
