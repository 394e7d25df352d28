// What the rich page's status badge says, from the Hocuspocus provider's
// state. `unsynced` is the provider's `unsyncedChanges`: the update
// messages (and the sync handshake) it sent that the server has not
// confirmed yet. crdt-hub confirms an update only once it is in the
// database, so 0 while connected and synced means every local edit is
// stored durably ("Saved").

/**
 * @typedef {'connecting' | 'connected' | 'disconnected'} SocketStatus
 * @typedef {'connecting' | 'syncing' | 'saving' | 'saved' | 'readonly' | 'offline' | 'refused'} RichPhase
 */

function plural (n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

/**
 * @param {{ socket: SocketStatus, synced: boolean, unsynced: number, everConnected: boolean, refused: string | null, readOnly?: boolean }} state
 * @returns {{ phase: RichPhase, text: string }}
 */
export function describeRichStatus ({ socket, synced, unsynced, everConnected, refused, readOnly = false }) {
  if (refused !== null) return { phase: 'refused', text: 'Refused by the server' }
  if (socket === 'connected') {
    if (!synced) return { phase: 'syncing', text: 'Syncing…' }
    // The token only lets us read: nothing of ours is sent to be saved.
    if (readOnly) return { phase: 'readonly', text: 'Read-only' }
    return unsynced > 0 ? { phase: 'saving', text: 'Saving…' } : { phase: 'saved', text: 'Saved' }
  }
  // The first connection attempt is "Connecting…"; after a connection was
  // lost (or closed on purpose), the page is offline until a socket is
  // open again, even while the provider retries.
  if (socket === 'connecting' && !everConnected) return { phase: 'connecting', text: 'Connecting…' }
  // `unsyncedChanges` keeps counting while offline: every local
  // transaction since the last confirmation (plus the handshake, if the
  // connection dropped in the middle of one).
  return {
    phase: 'offline',
    text: unsynced > 0 ? `Offline — ${plural(unsynced, 'unsaved edit')}` : 'Offline'
  }
}
