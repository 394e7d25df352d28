//! Awareness changes held for a room's next awareness message.
//!
//! In a presence storm every client moves its cursor a few times a second,
//! and sending each move to every other peer on its own costs a room of n
//! clients n² frames per round of moves: 500 clients at 2 Hz are half a
//! million frames a second, which is where other servers fall over. One
//! Yjs awareness update carries any number of clients' states, and stock
//! clients apply it entry by entry, so a room instead keeps what changed
//! since its last awareness message, the newest entry per client id, and
//! sends it as one message when its owner says (`--awareness-window`): a
//! round of moves then costs each peer one frame.
//!
//! The message goes to every peer, the ones whose entries it carries
//! included: a client ignores its own entry (y-protocols applies a state
//! only with a newer clock, and it has that clock already). When every
//! entry comes from one peer, as in a room with one person moving, that
//! peer is skipped, as it would be without holding.
//!
//! Holding only delays awareness, never document updates, so a cursor
//! never arrives before the text it points into.

use std::collections::hash_map::Entry;

use bytes::Bytes;
use yrs::sync::awareness::AwarenessUpdateEntry;

use super::PeerId;
use super::presence::{self, Changes};

/// Who made the held changes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Makers {
    #[default]
    Nobody,
    /// One peer: it is not sent its own changes back.
    One(PeerId),
    /// Several peers, or the room itself (a leaving peer's removal).
    Several,
}

/// What changed since the room's last awareness message.
#[derive(Debug, Default)]
pub struct PresenceBatch {
    changes: Changes,
    makers: Makers,
}

impl PresenceBatch {
    /// Holds `changes`, made by `maker` (`None`: by the room itself). A
    /// change replaces what is held for the same client id only when
    /// y-protocols would let it: a higher clock, or a removal at the same
    /// clock. The room takes nothing older for an id, even one that left
    /// ([`super::departed`]); should it ever, a held removal still goes out.
    pub fn add(&mut self, maker: Option<PeerId>, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        self.makers = match (self.makers, maker) {
            (Makers::Nobody, Some(peer)) => Makers::One(peer),
            (Makers::One(held), Some(peer)) if held == peer => Makers::One(peer),
            _ => Makers::Several,
        };
        for (client, change) in changes {
            match self.changes.entry(client) {
                Entry::Occupied(mut held) => {
                    if supersedes(&change, held.get()) {
                        held.insert(change);
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert(change);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Client ids whose change is held.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Everything held as one frame, with the peer not to send it to (the
    /// only one whose changes it carries), and empties the batch.
    pub fn take(&mut self) -> Option<(Option<PeerId>, Bytes)> {
        let skip = match std::mem::take(&mut self.makers) {
            Makers::One(peer) => Some(peer),
            Makers::Nobody | Makers::Several => None,
        };
        let frame = presence::encode_changes(std::mem::take(&mut self.changes))?;
        Some((skip, frame))
    }
}

/// Whether `new` wins over `held` for the same client id by y-protocols'
/// clock rule.
fn supersedes(new: &AwarenessUpdateEntry, held: &AwarenessUpdateEntry) -> bool {
    presence::wins(
        new.clock,
        presence::is_removal(&new.json),
        held.clock,
        !presence::is_removal(&held.json),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use yrs::block::ClientID;
    use yrs::sync::awareness::AwarenessUpdateEntry;

    use super::*;
    use crate::room::presence::states;

    fn change(client: u64, clock: u32, json: &str) -> Changes {
        Changes::from([(
            ClientID::new(client),
            AwarenessUpdateEntry {
                clock,
                json: json.into(),
            },
        )])
    }

    #[test]
    fn the_newest_change_per_client_goes_out_in_one_frame() {
        let mut batch = PresenceBatch::default();
        assert!(batch.take().is_none());
        batch.add(Some(1), change(10, 1, "{\"x\":1}"));
        batch.add(Some(2), change(20, 5, "{\"x\":2}"));
        batch.add(Some(1), change(10, 2, "{\"x\":3}"));
        batch.add(Some(2), change(20, 5, "null"));
        assert_eq!(batch.len(), 2);
        let (skip, frame) = batch.take().unwrap();
        assert_eq!(skip, None, "two makers: everyone gets it");
        assert_eq!(
            states(&frame),
            HashMap::from([
                (10, (2, "{\"x\":3}".to_string())),
                (20, (5, "null".to_string()))
            ])
        );
        assert!(batch.is_empty());
        assert!(batch.take().is_none(), "taken once");
    }

    #[test]
    fn one_makers_changes_skip_that_maker() {
        let mut batch = PresenceBatch::default();
        batch.add(Some(7), change(10, 1, "{}"));
        batch.add(Some(7), change(11, 1, "{}"));
        assert_eq!(batch.take().map(|(skip, _)| skip), Some(Some(7)));
        // The next batch starts over; the room's own removals go to all.
        batch.add(None, change(10, 2, "null"));
        assert_eq!(batch.take().map(|(skip, _)| skip), Some(None));
        batch.add(Some(7), change(12, 1, "{}"));
        batch.add(None, change(13, 2, "null"));
        assert_eq!(batch.take().map(|(skip, _)| skip), Some(None));
    }

    #[test]
    fn a_held_removal_is_not_replaced_by_an_older_state() {
        let mut batch = PresenceBatch::default();
        batch.add(Some(1), change(10, 4, "null"));
        batch.add(Some(2), change(10, 3, "{\"x\":1}"));
        batch.add(Some(2), change(10, 4, "{\"x\":2}"));
        let (_, frame) = batch.take().unwrap();
        assert_eq!(states(&frame)[&10], (4, "null".to_string()));
    }

    #[test]
    fn nothing_changed_holds_nothing() {
        let mut batch = PresenceBatch::default();
        batch.add(Some(1), Changes::new());
        assert!(batch.is_empty());
        assert!(batch.take().is_none());
    }
}
