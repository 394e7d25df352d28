//! The awareness states a room holds (who is here, their cursors), which
//! connection owns each, and how many one connection may hold.
//!
//! y-protocols' own rule is only "the higher clock wins": anyone may set
//! any client id's state. The red-team pass (issue 27) used that three
//! ways: one connection set 2,000 client ids (the server grew by 170 MB and
//! a joiner downloaded 154 MB of presence); one sent another connection's
//! client id with a higher clock, and everyone saw the victim renamed,
//! the victim's own client included (it adopts a newer state for its own
//! id); and one removed others with `null`. So a room adds, on top of the
//! clock rule:
//!
//! - **Ownership.** A client id belongs to the connection that first set
//!   it in the room (or, in cluster mode, to the other node that published
//!   it). Entries for it from anyone else, removals included, are ignored
//!   and never forwarded (and counted when they would have won by the
//!   clock rule: stock clients send back what they are sent, stale). The
//!   owner leaving frees it: its states are removed and the removal is
//!   sent, as before.
//! - **A cap per connection** (`--max-awareness-clients`): a browser tab
//!   sets one client id, y-websocket one per document; entries for ids past
//!   the cap are ignored.
//! - **A cap per room** (`--max-awareness-room-bytes`) on the bytes of the
//!   states this node's connections hold, which bounds what a joiner is
//!   sent: a state that would take the room past it is ignored (the
//!   connection's earlier state stays).
//!
//! Each state is valid JSON within `--max-awareness-bytes` and
//! `--max-awareness-depth` before it gets here (the connection checks it:
//! [`crate::awareness_guard`]). States from other nodes are trusted, but
//! cannot take an id a local connection owns, nor the other way round.
//!
//! yrs's `Awareness` keeps every client id it ever saw (a removed state
//! stays as a tombstone), so a room whose connections come and go grew by
//! one entry per connection for its whole life; here an id is forgotten
//! when its owner leaves, but for its removal's clock, kept a while
//! ([`super::departed`]) so that clients echoing its last state cannot
//! bring it back.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use yrs::block::ClientID;
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;

use super::PeerId;
use super::departed::Departed;
use crate::protocol;

/// A removal, as y-protocols writes it.
const NULL: &str = "null";

/// Whether an entry's state is a removal: clients read `null` as one
/// however it is spaced.
pub fn is_removal(json: &str) -> bool {
    json.trim() == NULL
}

/// y-protocols' clock rule: whether an entry at `clock` (a removal or
/// not) replaces one held at `held_clock` (with a state, or already
/// removed). A higher clock wins; a removal at the same clock removes a
/// state still there.
pub fn wins(clock: u32, removal: bool, held_clock: u32, held_has_state: bool) -> bool {
    clock > held_clock || (clock == held_clock && removal && held_has_state)
}

/// Bounds on what one room's connections may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceCaps {
    /// Client ids one connection may set (`--max-awareness-clients`).
    pub clients_per_connection: usize,
    /// Bytes of states the room's own connections may hold in all
    /// (`--max-awareness-room-bytes`).
    pub room_bytes: usize,
}

impl Default for PresenceCaps {
    fn default() -> Self {
        Self {
            clients_per_connection: 4,
            room_bytes: 16 << 20,
        }
    }
}

/// Who may change a client id's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A connection of this room, on this node.
    Peer(PeerId),
    /// Another node of the cluster (its own connection owns it there).
    Remote,
}

/// Entries ignored while applying one update, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ignored {
    /// The client id belongs to another connection or node.
    pub not_owner: usize,
    /// The connection already holds `clients_per_connection` ids.
    pub client_cap: usize,
    /// The state would take the room past `room_bytes`.
    pub room_bytes: usize,
}

impl Ignored {
    pub fn any(&self) -> bool {
        self.not_owner + self.client_cap + self.room_bytes > 0
    }
}

impl Applied {
    /// The change for every other peer as one frame, if anything changed.
    pub fn frame(&self) -> Option<Bytes> {
        encode_changes(self.changes.clone())
    }
}

/// Awareness entries by client id: the body of one awareness update.
pub type Changes = HashMap<ClientID, AwarenessUpdateEntry>;

/// `changes` as one awareness frame; `None` when empty.
pub fn encode_changes(changes: Changes) -> Option<Bytes> {
    (!changes.is_empty()).then(|| protocol::encode_awareness(&AwarenessUpdate { clients: changes }))
}

/// What applying an update changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// The entries every other peer is to learn (empty if nothing changed).
    pub changes: Changes,
    /// Client ids whose state was set (added or renewed).
    pub set: Vec<ClientID>,
    /// Client ids whose state was removed.
    pub removed: Vec<ClientID>,
    pub ignored: Ignored,
}

#[derive(Debug)]
struct Entry {
    clock: u32,
    /// `None` once the owner removed it (kept, with its clock, while the
    /// owner is here: the id stays its own).
    state: Option<Arc<str>>,
    owner: Owner,
}

/// The room's awareness states and their owners.
#[derive(Debug, Default)]
pub struct Presence {
    entries: HashMap<ClientID, Entry>,
    /// The ids each local connection set, removed ones included: what its
    /// leaving removes, and what counts against its cap.
    by_peer: HashMap<PeerId, Vec<ClientID>>,
    /// Bytes of the states local connections hold.
    local_bytes: usize,
    caps: PresenceCaps,
    /// Ids let go of lately, with their removal's clock.
    departed: Departed,
    /// Every state as one frame (a joiner's greeting, the answer to an
    /// awareness query), encoded once until a state changes: a join storm
    /// in a busy room encodes it once, not once per joiner.
    everyone: Option<Bytes>,
}

impl Presence {
    pub fn new(caps: PresenceCaps) -> Self {
        Self {
            caps,
            ..Self::default()
        }
    }

    /// Applies `update` from `from`, entry by entry: y-protocols' clock
    /// rule (a higher clock replaces; a removal at the same clock removes),
    /// after the ownership and cap rules of the module documentation.
    pub fn apply(&mut self, from: Owner, update: AwarenessUpdate) -> Applied {
        let mut applied = Applied::default();
        let forward = &mut applied.changes;
        for (client, AwarenessUpdateEntry { clock, json }) in update.clients {
            let removal = is_removal(&json);
            let Some(entry) = self.entries.get_mut(&client) else {
                if removal || self.departed.outdates(client, clock) {
                    // Nothing to remove (no tombstone for a stranger's
                    // id), or an echo of a departed client's old state.
                    continue;
                }
                if let Owner::Peer(peer) = from {
                    let held = self.by_peer.get(&peer).map_or(0, Vec::len);
                    if held >= self.caps.clients_per_connection {
                        applied.ignored.client_cap += 1;
                        continue;
                    }
                    if self.local_bytes + json.len() > self.caps.room_bytes {
                        applied.ignored.room_bytes += 1;
                        continue;
                    }
                    self.local_bytes += json.len();
                    self.by_peer.entry(peer).or_default().push(client);
                }
                self.departed.returned(client);
                self.entries.insert(
                    client,
                    Entry {
                        clock,
                        state: Some(json.clone()),
                        owner: from,
                    },
                );
                forward.insert(client, AwarenessUpdateEntry { clock, json });
                applied.set.push(client);
                continue;
            };
            if !wins(clock, removal, entry.clock, entry.state.is_some()) {
                // Stale, as clients would find it too: most often a stock
                // client (y-websocket, Hocuspocus before v4) sending back
                // what it was sent, which is no attempt on anyone's id.
                continue;
            }
            if entry.owner != from {
                applied.ignored.not_owner += 1;
                continue;
            }
            let old = entry.state.as_ref().map_or(0, |s| s.len());
            let new = if removal { 0 } else { json.len() };
            if from != Owner::Remote {
                if new > old && self.local_bytes - old + new > self.caps.room_bytes {
                    applied.ignored.room_bytes += 1;
                    continue;
                }
                self.local_bytes = self.local_bytes - old + new;
            }
            entry.clock = clock;
            if removal {
                applied.removed.push(client);
                if from == Owner::Remote {
                    // Its node let it go: the id is free again.
                    self.entries.remove(&client);
                    self.departed.record(client, clock);
                } else {
                    entry.state = None;
                }
            } else {
                entry.state = Some(json.clone());
                applied.set.push(client);
            }
            forward.insert(client, AwarenessUpdateEntry { clock, json });
        }
        if !applied.changes.is_empty() {
            self.everyone = None;
        }
        applied
    }

    /// Every state, as one frame; `None` when there is none.
    pub fn everyone(&mut self) -> Option<Bytes> {
        if self.everyone.is_none() {
            self.everyone = self.encode(|_| true);
        }
        self.everyone.clone()
    }

    /// The answer to an awareness query: every state, or none (the client
    /// that asked waits for an answer either way, as y-protocols gives one).
    pub fn answer_query(&mut self) -> Bytes {
        self.everyone().unwrap_or_else(|| {
            protocol::encode_awareness(&AwarenessUpdate {
                clients: HashMap::new(),
            })
        })
    }

    /// The states this node's own connections hold, as one frame.
    pub fn local(&self) -> Option<Bytes> {
        self.encode(|owner| owner != Owner::Remote)
    }

    /// Forgets what `peer` held; returns the removal of its states (one
    /// clock past each) for the others: empty if it held none.
    pub fn leave(&mut self, peer: PeerId) -> Changes {
        let Some(clients) = self.by_peer.remove(&peer) else {
            return Changes::new();
        };
        self.forget(clients, |owner| owner == Owner::Peer(peer))
    }

    /// Forgets the states of other nodes' clients in `clients` (their node
    /// stopped renewing them); returns their removal for local peers.
    pub fn expire_remote(&mut self, clients: impl IntoIterator<Item = ClientID>) -> Option<Bytes> {
        encode_changes(self.forget(clients, |owner| owner == Owner::Remote))
    }

    /// Client ids with a state, for tests and metrics.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|e| e.state.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Who owns `client`'s id, if anyone.
    pub fn owner(&self, client: ClientID) -> Option<Owner> {
        self.entries.get(&client).map(|e| e.owner)
    }

    /// The state of `client`, if it has one.
    pub fn state(&self, client: ClientID) -> Option<&str> {
        self.entries.get(&client)?.state.as_deref()
    }

    /// Bytes of the states this node's connections hold.
    pub fn local_bytes(&self) -> usize {
        self.local_bytes
    }

    fn forget(
        &mut self,
        clients: impl IntoIterator<Item = ClientID>,
        owned: impl Fn(Owner) -> bool,
    ) -> Changes {
        let mut removal = Changes::new();
        for client in clients {
            let Some(entry) = self.entries.get(&client) else {
                continue;
            };
            if !owned(entry.owner) {
                continue;
            }
            let Some(entry) = self.entries.remove(&client) else {
                continue;
            };
            // The removal carries the state's own clock, as the reference
            // server's does: clients take a removal at the clock of the
            // state they hold, and the client itself, reconnecting with
            // that state unchanged, shows again at its next change or
            // 15 s renewal (one past this) rather than the second.
            let clock = entry.clock;
            self.departed.record(client, clock);
            let Some(state) = entry.state else {
                // Its removal went out when it was removed.
                continue;
            };
            if entry.owner != Owner::Remote {
                self.local_bytes -= state.len();
            }
            removal.insert(
                client,
                AwarenessUpdateEntry {
                    clock,
                    json: NULL.into(),
                },
            );
        }
        if !removal.is_empty() {
            self.everyone = None;
        }
        removal
    }

    fn encode(&self, include: impl Fn(Owner) -> bool) -> Option<Bytes> {
        let clients: HashMap<_, _> = self
            .entries
            .iter()
            .filter(|(_, e)| include(e.owner))
            .filter_map(|(client, e)| {
                let json = e.state.clone()?;
                Some((
                    *client,
                    AwarenessUpdateEntry {
                        clock: e.clock,
                        json,
                    },
                ))
            })
            .collect();
        (!clients.is_empty()).then(|| protocol::encode_awareness(&AwarenessUpdate { clients }))
    }
}

/// The states an awareness frame carries: client → (clock, JSON).
#[cfg(test)]
pub(crate) fn states(frame: &Bytes) -> HashMap<u64, (u32, String)> {
    use yrs::sync::Message;
    use yrs::updates::decoder::Decode;
    let Ok(Message::Awareness(update)) = Message::decode_v1(frame) else {
        panic!("not an awareness frame");
    };
    update
        .clients
        .into_iter()
        .map(|(c, e)| (c.get(), (e.clock, e.json.to_string())))
        .collect()
}

#[cfg(test)]
mod tests;
