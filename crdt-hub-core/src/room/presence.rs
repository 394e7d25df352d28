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
//!   and never forwarded. The owner leaving frees it: its states are
//!   removed and the removal is sent, as before.
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
//! when its owner leaves.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use yrs::block::ClientID;
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;

use super::PeerId;
use crate::protocol;

/// A removal, as y-protocols writes it.
const NULL: &str = "null";

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
            // Clients read `null` as a removal however it is spaced.
            let removal = json.trim() == NULL;
            let Some(entry) = self.entries.get_mut(&client) else {
                if removal {
                    // Nothing to remove; no tombstone for a stranger's id.
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
            if entry.owner != from {
                applied.ignored.not_owner += 1;
                continue;
            }
            let newer = clock > entry.clock || (clock == entry.clock && removal);
            if !newer || (removal && entry.state.is_none()) {
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
            let Some(state) = entry.state else {
                // Its removal was sent when it was removed.
                continue;
            };
            if entry.owner != Owner::Remote {
                self.local_bytes -= state.len();
            }
            removal.insert(
                client,
                AwarenessUpdateEntry {
                    clock: entry.clock.saturating_add(1),
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
mod tests {
    use super::*;

    fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: entries
                .iter()
                .map(|&(client, clock, json)| {
                    (
                        ClientID::new(client),
                        AwarenessUpdateEntry {
                            clock,
                            json: json.into(),
                        },
                    )
                })
                .collect(),
        }
    }

    const ANN: &str = r##"{"user":{"name":"ann","color":"#f00"}}"##;
    const EVE: &str = r##"{"user":{"name":"ann (fake)","color":"#f00"}}"##;

    #[test]
    fn a_client_id_belongs_to_the_connection_that_set_it_first() {
        let mut presence = Presence::default();
        let set = presence.apply(Owner::Peer(1), update(&[(10, 1, ANN)]));
        assert_eq!(states(&set.frame().unwrap())[&10], (1, ANN.to_string()));

        // Peer 2 sends ann's id with a far higher clock: ignored, and
        // nothing is forwarded.
        let spoof = presence.apply(Owner::Peer(2), update(&[(10, 1000, EVE)]));
        assert!(spoof.frame().is_none());
        assert_eq!(spoof.ignored.not_owner, 1);
        assert_eq!(presence.state(ClientID::new(10)), Some(ANN));

        // Ann renews (clock 2, as y-protocols does every 15 s): accepted,
        // although the spoofer's clock was higher.
        let renewed = presence.apply(Owner::Peer(1), update(&[(10, 2, ANN)]));
        assert_eq!(states(&renewed.frame().unwrap())[&10], (2, ANN.to_string()));
    }

    #[test]
    fn a_removal_by_anyone_but_the_owner_is_ignored() {
        let mut presence = Presence::default();
        presence.apply(Owner::Peer(1), update(&[(10, 5, ANN)]));
        for clock in [5, 6, u32::MAX - 1] {
            let removal = presence.apply(Owner::Peer(2), update(&[(10, clock, "null")]));
            assert!(removal.frame().is_none());
            assert_eq!(removal.ignored.not_owner, 1);
        }
        assert_eq!(presence.state(ClientID::new(10)), Some(ANN));
        // Nor can another node remove it.
        let remote = presence.apply(Owner::Remote, update(&[(10, 9, "null")]));
        assert_eq!(remote.ignored.not_owner, 1);
        assert_eq!(presence.state(ClientID::new(10)), Some(ANN));

        // The owner can (y-protocols' `setLocalState(null)`), and the id
        // stays its own while it is here.
        let removed = presence.apply(Owner::Peer(1), update(&[(10, 6, "null")]));
        assert_eq!(removed.removed, [ClientID::new(10)]);
        assert_eq!(states(&removed.frame().unwrap())[&10], (6, "null".into()));
        assert!(presence.is_empty());
        let taken = presence.apply(Owner::Peer(2), update(&[(10, 7, EVE)]));
        assert_eq!(taken.ignored.not_owner, 1);
        let back = presence.apply(Owner::Peer(1), update(&[(10, 7, ANN)]));
        assert_eq!(back.set, [ClientID::new(10)]);
    }

    #[test]
    fn the_clock_rule_still_holds_for_the_owner() {
        let mut presence = Presence::default();
        presence.apply(Owner::Peer(1), update(&[(10, 5, ANN)]));
        // Older or equal clocks change nothing.
        assert!(
            presence
                .apply(Owner::Peer(1), update(&[(10, 4, EVE)]))
                .frame()
                .is_none()
        );
        assert!(
            presence
                .apply(Owner::Peer(1), update(&[(10, 5, EVE)]))
                .frame()
                .is_none()
        );
        // A removal at the same clock removes.
        let removed = presence.apply(Owner::Peer(1), update(&[(10, 5, " null ")]));
        assert_eq!(removed.removed, [ClientID::new(10)]);
    }

    #[test]
    fn a_connection_holds_at_most_its_cap_of_client_ids() {
        let caps = PresenceCaps {
            clients_per_connection: 4,
            room_bytes: 1 << 20,
        };
        let mut presence = Presence::new(caps);
        let fakes: Vec<_> = (1..=2000).map(|c| (c, 1, ANN)).collect();
        let flood = presence.apply(Owner::Peer(1), update(&fakes));
        assert_eq!(flood.set.len(), 4);
        assert_eq!(flood.ignored.client_cap, 1996);
        assert_eq!(states(&flood.frame().unwrap()).len(), 4);
        assert_eq!(presence.len(), 4);
        // A removed id still counts: removing and adding cannot cycle
        // through ids.
        let kept = flood.set[0];
        presence.apply(Owner::Peer(1), update(&[(kept.get(), 2, "null")]));
        let another = presence.apply(Owner::Peer(1), update(&[(5000, 1, ANN)]));
        assert_eq!(another.ignored.client_cap, 1);
        // Its own ids it may still renew; other connections are unaffected.
        let renew = presence.apply(Owner::Peer(1), update(&[(kept.get(), 3, ANN)]));
        assert_eq!(renew.set, [kept]);
        let other = presence.apply(Owner::Peer(2), update(&[(6000, 1, ANN)]));
        assert_eq!(other.set.len(), 1);
        // Another node's clients are not a connection's: no cap.
        let remote: Vec<_> = (7000..7010).map(|c| (c, 1, ANN)).collect();
        assert_eq!(presence.apply(Owner::Remote, update(&remote)).set.len(), 10);
    }

    #[test]
    fn the_rooms_states_stay_under_its_byte_cap() {
        let caps = PresenceCaps {
            clients_per_connection: 4,
            room_bytes: 100,
        };
        let mut presence = Presence::new(caps);
        let forty = format!("\"{}\"", "x".repeat(38));
        let sixty = format!("\"{}\"", "x".repeat(58));
        assert_eq!(
            presence
                .apply(Owner::Peer(1), update(&[(1, 1, &forty)]))
                .set
                .len(),
            1
        );
        assert_eq!(
            presence
                .apply(Owner::Peer(2), update(&[(2, 1, &sixty)]))
                .set
                .len(),
            1
        );
        assert_eq!(presence.local_bytes(), 100);
        // A third joiner's state would pass it: ignored.
        let full = presence.apply(Owner::Peer(3), update(&[(3, 1, ANN)]));
        assert_eq!(full.ignored.room_bytes, 1);
        // Growing a state past it is ignored too (the old one stays);
        // renewing or shrinking one is not.
        let grow = presence.apply(Owner::Peer(1), update(&[(1, 2, &sixty)]));
        assert_eq!(grow.ignored.room_bytes, 1);
        assert_eq!(presence.state(ClientID::new(1)), Some(forty.as_str()));
        assert_eq!(
            presence
                .apply(Owner::Peer(1), update(&[(1, 3, &forty)]))
                .set
                .len(),
            1
        );
        assert_eq!(
            presence
                .apply(Owner::Peer(2), update(&[(2, 2, "1")]))
                .set
                .len(),
            1
        );
        assert_eq!(presence.local_bytes(), 41);
        assert_eq!(
            presence
                .apply(Owner::Peer(3), update(&[(3, 1, ANN)]))
                .set
                .len(),
            1
        );
        // A joiner's greeting holds no more than the cap.
        let greeting = presence.everyone().unwrap();
        let total: usize = states(&greeting).values().map(|(_, json)| json.len()).sum();
        assert!(total <= 100, "{total}");
    }

    #[test]
    fn leaving_removes_the_owners_states_and_frees_its_ids() {
        let mut presence = Presence::default();
        presence.apply(Owner::Peer(1), update(&[(10, 3, ANN), (11, 1, ANN)]));
        presence.apply(Owner::Peer(1), update(&[(11, 2, "null")]));
        presence.apply(Owner::Peer(2), update(&[(20, 1, EVE)]));
        let removal = encode_changes(presence.leave(1)).unwrap();
        // Only what the others still saw, one clock past.
        assert_eq!(states(&removal), HashMap::from([(10, (4, "null".into()))]));
        assert_eq!(presence.owner(ClientID::new(10)), None);
        assert_eq!(presence.owner(ClientID::new(11)), None);
        assert_eq!(presence.local_bytes(), EVE.len());
        assert!(presence.leave(1).is_empty());
        // The freed id may be set by whoever comes next.
        let next = presence.apply(Owner::Peer(3), update(&[(10, 1, ANN)]));
        assert_eq!(next.set, [ClientID::new(10)]);
    }

    #[test]
    fn a_remote_client_id_cannot_be_taken_by_a_local_connection() {
        let mut presence = Presence::default();
        presence.apply(Owner::Remote, update(&[(30, 2, ANN)]));
        let spoof = presence.apply(Owner::Peer(1), update(&[(30, 99, EVE)]));
        assert_eq!(spoof.ignored.not_owner, 1);
        assert_eq!(presence.state(ClientID::new(30)), Some(ANN));
        // Its node removing it frees it (no tombstone is kept).
        let removed = presence.apply(Owner::Remote, update(&[(30, 3, "null")]));
        assert_eq!(removed.removed, [ClientID::new(30)]);
        assert_eq!(presence.owner(ClientID::new(30)), None);
        // Expiry forgets remote states only.
        presence.apply(Owner::Remote, update(&[(31, 1, ANN)]));
        presence.apply(Owner::Peer(1), update(&[(32, 1, ANN)]));
        let expired = presence
            .expire_remote([ClientID::new(31), ClientID::new(32)])
            .unwrap();
        assert_eq!(states(&expired), HashMap::from([(31, (2, "null".into()))]));
        assert_eq!(presence.state(ClientID::new(32)), Some(ANN));
        assert!(presence.local().is_some_and(|f| states(&f).len() == 1));
    }

    #[test]
    fn the_greeting_is_encoded_once_until_a_state_changes() {
        let mut presence = Presence::default();
        assert!(presence.everyone().is_none());
        presence.apply(Owner::Peer(1), update(&[(10, 1, ANN)]));
        let first = presence.everyone().unwrap();
        let again = presence.everyone().unwrap();
        assert_eq!(first.as_ptr(), again.as_ptr(), "cached");
        // Ignored entries change nothing, so the cache stays.
        presence.apply(Owner::Peer(2), update(&[(10, 9, EVE)]));
        assert_eq!(presence.everyone().unwrap().as_ptr(), first.as_ptr());
        presence.apply(Owner::Peer(1), update(&[(10, 2, ANN)]));
        assert_eq!(states(&presence.everyone().unwrap())[&10].0, 2);
    }
}
