// The server's HTTP API (server/openapi.yaml), for the panels that need it.
// Room names are one percent-encoded path segment; the page's `?token=` is
// sent as a bearer token (with auth on, the API wants an admin token).

/** An API answer that was not 2xx: `status` and the server's `{error}` text. */
export class ApiError extends Error {
  constructor (status, message) {
    super(message || `HTTP ${status}`)
    this.status = status
  }

  /** 401/403: this page's token (or its absence) is not enough. */
  get unauthorized () {
    return this.status === 401 || this.status === 403
  }
}

/**
 * `method path` against the server that served the page; resolves to the
 * parsed JSON body, rejects with ApiError (or a TypeError when offline).
 *
 * @param {{ token: string | null }} session
 * @param {string} method
 * @param {string} path   starting with `/api/`
 * @param {any} [body]    sent as JSON
 */
export async function api (session, method, path, body) {
  const headers = { Accept: 'application/json' }
  if (session.token) headers.Authorization = `Bearer ${session.token}`
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'same-origin'
  })
  const text = await response.text()
  let json = null
  try { json = text ? JSON.parse(text) : null } catch {}
  if (!response.ok) throw new ApiError(response.status, json?.error)
  return json
}

/** `/api/rooms/{room}` plus `rest`, the room as one encoded segment. */
export function roomPath (room, rest = '') {
  return `/api/rooms/${encodeURIComponent(room)}${rest}`
}
