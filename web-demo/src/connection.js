// The link to crdt-hub: one WebsocketProvider per page, and a small status
// model on top of it that says what is really going on — including how many
// local edits the server has not got yet.

import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'

/**
 * @typedef {'connecting' | 'syncing' | 'connected' | 'offline' | 'refused'} Phase
 * @typedef {'saving' | 'saved' | null} Saved  null: the server sends no acks
 * @typedef {{ phase: Phase, unsent: number, unsaved: number, saved: Saved, wantOnline: boolean, refusal: { code: number, reason: string } | null }} Status
 */

/**
 * The message crdt-hub sends on a `?acks=1` connection after each durable
 * write that covers this connection's updates: varUint(100), then a Yjs
 * (v1) state vector giving, per client, the end clock of this
 * connection's updates that are now in the database.
 */
export const MESSAGE_ACK = 100

/** The end clock of `clientId`'s updates in `doc`. */
function clockOf (doc, clientId) {
  return Y.decodeStateVector(Y.encodeStateVector(doc)).get(clientId) ?? 0
}

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
      // acks=1: ask for MESSAGE_ACK after each durable write (a server
      // without acks ignores the parameter and never sends one).
      params: token ? { token, acks: '1' } : { acks: '1' },
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
    /** Per client, the highest end clock the server said is stored. */
    this.acked = new Map()
    /** Whether any ack arrived: until then the status is what it was without acks. */
    this.acksSeen = false
    /**
     * The end clock after each local update not yet covered by an ack.
     * Its length is the "N unsaved edits" shown offline (a count of local
     * updates, not of characters: the clock difference would count every
     * character of a paste). A deletion does not advance the clock, so an
     * update that only deletes counts as covered by the next ack after it
     * (the server acks it with an empty state vector). That is an
     * approximation: an ack already on its way for an earlier edit can
     * arrive first and cover the deletion a flush too soon.
     */
    this.unackedEnds = []

    this.provider.messageHandlers[MESSAGE_ACK] = (_encoder, decoder) => {
      // y-websocket 3.1.0 calls handlers as (encoder, decoder, provider,
      // emitSynced, messageType); writing nothing to `encoder` sends no reply.
      this.ack(Y.decodeStateVector(decoding.readVarUint8Array(decoder)))
    }

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
      if (origin === this.provider) return
      this.unackedEnds.push(clockOf(doc, doc.clientID))
      // Against a server without acks nothing ever prunes the list: keep
      // it bounded (it only matters once acks arrive).
      if (!this.acksSeen && this.unackedEnds.length > 4096) this.unackedEnds.splice(0, 2048)
      if (!this.provider.wsconnected) this.unsent += 1
      if (!this.provider.wsconnected || this.acksSeen) this.changed()
    })
  }

  /** A MESSAGE_ACK: the server stored our updates up to these clocks. */
  ack (stateVector) {
    // Acks come in order, but keep the max per client all the same (a new
    // connection acks only what it sent itself).
    for (const [client, clock] of stateVector) {
      if (clock > (this.acked.get(client) ?? 0)) this.acked.set(client, clock)
    }
    this.acksSeen = true
    const stored = this.acked.get(this.doc.clientID) ?? 0
    this.unackedEnds = this.unackedEnds.filter(end => end > stored)
    this.changed()
  }

  /** Whether a local edit is not yet known to be in the server's database. */
  get saving () {
    // "Saving…" while our own clock is ahead of what the server stored,
    // or an update of ours (e.g. a deletion, which has no clock) is still
    // waiting for the next ack.
    return clockOf(this.doc, this.doc.clientID) > (this.acked.get(this.doc.clientID) ?? 0) ||
      this.unackedEnds.length > 0
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
    const saved = this.acksSeen ? (this.saving ? 'saving' : 'saved') : null
    return { phase, unsent: this.unsent, unsaved: this.unackedEnds.length, saved, wantOnline: p.shouldConnect, refusal: this.refusal }
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
