// The link to crdt-hub: one WebsocketProvider per page, and a small status
// model on top of it that says what is really going on — including how many
// local edits the server has not got yet.

import { WebsocketProvider } from 'y-websocket'

/**
 * @typedef {'connecting' | 'syncing' | 'connected' | 'offline' | 'refused'} Phase
 * @typedef {{ phase: Phase, unsent: number, wantOnline: boolean, refusal: { code: number, reason: string } | null }} Status
 */

/**
 * Close codes for an edit the server refused for what it is: malformed or
 * not applicable (1002), unsupported such as a subdocument (1003), too
 * large (1009). Reconnecting would send the same edit again.
 */
export const REFUSED_CONTENT = new Set([1002, 1003, 1009])

/** The server's close for a session whose token expired. */
export const TOKEN_EXPIRED = 4401

export class Connection {
  /**
   * @param {string} url ws(s)://host of the server
   * @param {string} room
   * @param {import('yjs').Doc} doc
   * @param {{ token: string | null, tokenUrl?: string | null }} options
   */
  constructor (url, room, doc, { token, tokenUrl = null }) {
    this.doc = doc
    /** Where a fresh token comes from when the server says ours expired. */
    this.tokenUrl = tokenUrl
    this.provider = new WebsocketProvider(url, room, doc, {
      params: token ? { token } : {},
      // Tabs of one browser would otherwise also sync with each other over
      // a BroadcastChannel, behind the server's back: "connected" and
      // "offline" here are about crdt-hub alone.
      disableBc: true
    })
    /** Local updates made while no socket was open; reset once synced. */
    this.unsent = 0
    /** Whether a socket closed or failed, unasked, since the last sync. */
    this.lostConnection = false
    /** The close that told the provider to stop retrying (a 44xx code), if any. */
    this.refusal = null
    this.listeners = new Set()

    this.provider.on('status', ({ status }) => {
      if (status === 'disconnected') this.forgetPeers()
      this.changed()
    })
    this.provider.on('sync', synced => {
      if (synced) {
        // The server answered our state vector after we sent it ours: the
        // edits we held are now on their way to (or at) the server.
        this.unsent = 0
        this.lostConnection = false
      }
      this.changed()
    })
    this.provider.on('connection-close', event => {
      if (REFUSED_CONTENT.has(event?.code)) {
        // The server refused an edit of ours for what it is (too large,
        // a subdocument, malformed): reconnecting would only send it again
        // (and the server makes a repeat wait longer each time). Stop, and
        // say why; the edit stays here.
        this.refusal = { code: event.code, reason: String(event.reason || '') }
        this.provider.disconnect()
      } else if (this.provider.shouldConnect) {
        this.lostConnection = true
      }
      this.changed()
    })
    this.provider.on('closed', close => {
      // y-websocket gives up on 4400–4499 closes: the server refused us.
      if (close.code === TOKEN_EXPIRED && this.tokenUrl) {
        this.refreshToken()
        return
      }
      this.refusal = { code: close.code, reason: close.reason }
      this.changed()
    })
    this.provider.on('connection-error', () => {
      this.lostConnection = true
      this.changed()
    })
    doc.on('update', (_update, origin) => {
      // Updates the provider applied came from the server; everything else
      // was typed here.
      if (origin !== this.provider && !this.provider.wsconnected) {
        this.unsent += 1
        this.changed()
      }
    })
  }

  get awareness () {
    return this.provider.awareness
  }

  /** @returns {Status} */
  get status () {
    const p = this.provider
    let phase
    if (p.wsconnected) phase = p.synced ? 'connected' : 'syncing'
    else if (this.refusal && !p.shouldConnect) phase = 'refused'
    else if (p.shouldConnect && !this.lostConnection) phase = 'connecting'
    else phase = 'offline'
    return { phase, unsent: this.unsent, wantOnline: p.shouldConnect, refusal: this.refusal }
  }

  /** Calls `listener(status)` now and on every change; returns an unsubscribe. */
  subscribe (listener) {
    this.listeners.add(listener)
    listener(this.status)
    return () => this.listeners.delete(listener)
  }

  /**
   * On disconnect y-websocket drops the other peers' awareness states but
   * keeps their clocks. On reconnect the server sends those same states
   * with the same clocks, which awareness then ignores as old news: the
   * peers would stay invisible until they next move their cursor (or their
   * 15 s renewal). Forgetting the clocks of peers we no longer show lets
   * the server's copy in at once.
   */
  forgetPeers () {
    const { awareness } = this
    for (const clientId of [...awareness.meta.keys()]) {
      if (clientId !== awareness.clientID && !awareness.states.has(clientId)) {
        awareness.meta.delete(clientId)
      }
    }
  }

  /**
   * Fetches a fresh token from `tokenUrl` and reconnects with it, once per
   * expiry: a failure shows as a refusal, never as a loop of reconnects.
   */
  async refreshToken () {
    try {
      const response = await fetch(this.tokenUrl, { credentials: 'include' })
      if (!response.ok) throw new Error(`HTTP ${response.status}`)
      const token = (await response.text()).trim()
      if (!token) throw new Error('an empty token')
      this.provider.params = { ...this.provider.params, token }
      this.refusal = null
      this.provider.connect()
    } catch (e) {
      this.refusal = { code: TOKEN_EXPIRED, reason: `token expired; getting a new one failed (${e.message})` }
    }
    this.changed()
  }

  goOffline () {
    this.provider.disconnect()
    this.changed()
  }

  goOnline () {
    this.lostConnection = false
    this.refusal = null
    this.provider.connect()
    this.changed()
  }

  changed () {
    const status = this.status
    for (const listener of this.listeners) listener(status)
  }
}
