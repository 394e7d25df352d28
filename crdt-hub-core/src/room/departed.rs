//! Client ids whose states the room let go of, each with the clock of its
//! removal, so that an echo of an older state cannot set it again.
//!
//! y-websocket (every major) and Hocuspocus providers before v4 send back
//! every awareness change they apply, other clients' included. When a
//! client leaves, some of those echoes of its last state reach the room
//! after its removal. The room used to forget a departed id at once, so
//! such an echo set it again as new, owned by the connection that echoed
//! it: a ghost that every later joiner was shown until that connection
//! left. Worse, when the removal was still held for the room's next
//! awareness message, the echo replaced it, and the others never saw the
//! client go. Clients keep the removal's clock and ignore the echo (only
//! a higher clock wins); the room now does the same.
//!
//! Bounded: the newest [`KEPT`] departures, the oldest forgotten first. An
//! echo comes within a round trip of the removal it follows, and a room
//! whose clients come and go keeps no more than this per room.

use std::collections::{HashMap, VecDeque};

use yrs::block::ClientID;

/// Departures a room remembers.
pub const KEPT: usize = 1024;

#[derive(Debug, Default)]
pub struct Departed {
    /// The removal clock of each remembered id.
    clocks: HashMap<ClientID, u32>,
    /// Departures oldest first, with their clock: an id that came back and
    /// left again is in here twice, and only the record with the clock the
    /// map holds is its current one.
    order: VecDeque<(ClientID, u32)>,
}

impl Departed {
    /// `client` left with its removal at `clock`.
    pub fn record(&mut self, client: ClientID, clock: u32) {
        self.clocks.insert(client, clock);
        self.order.push_back((client, clock));
        while self.order.len() > KEPT {
            let Some((oldest, at)) = self.order.pop_front() else {
                break;
            };
            if self.clocks.get(&oldest) == Some(&at) {
                self.clocks.remove(&oldest);
            }
        }
    }

    /// Whether a state for `client` at `clock` is older than its removal,
    /// or the removal itself: y-protocols' clients would ignore it too.
    pub fn outdates(&self, client: ClientID, clock: u32) -> bool {
        self.clocks
            .get(&client)
            .is_some_and(|&removed| clock <= removed)
    }

    /// `client` is back (with a newer clock): its departure no longer counts.
    pub fn returned(&mut self, client: ClientID) {
        self.clocks.remove(&client);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clocks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ClientID {
        ClientID::new(n)
    }

    #[test]
    fn only_a_newer_clock_than_the_removal_comes_back() {
        let mut departed = Departed::default();
        departed.record(id(1), 5);
        assert!(departed.outdates(id(1), 4), "an echo of an older state");
        assert!(departed.outdates(id(1), 5), "the removal's own clock");
        assert!(!departed.outdates(id(1), 6), "the client, back and moving");
        assert!(!departed.outdates(id(2), 0), "another id");
        departed.returned(id(1));
        assert!(!departed.outdates(id(1), 1));
    }

    #[test]
    fn the_oldest_departures_are_forgotten_first() {
        let mut departed = Departed::default();
        for n in 0..KEPT as u64 + 10 {
            departed.record(id(n), 1);
        }
        assert_eq!(departed.len(), KEPT);
        assert!(!departed.outdates(id(0), 1), "forgotten");
        assert!(departed.outdates(id(10), 1), "kept");
        assert!(departed.order.len() <= KEPT);
    }

    #[test]
    fn leaving_again_is_remembered_past_the_first_records_turn() {
        let mut departed = Departed::default();
        departed.record(id(7), 3);
        departed.returned(id(7));
        for n in 100..100 + KEPT as u64 / 2 {
            departed.record(id(n), 1);
        }
        departed.record(id(7), 9);
        // The first record of 7 goes; its second stays.
        for n in 10_000..10_000 + KEPT as u64 / 2 {
            departed.record(id(n), 1);
        }
        assert!(departed.outdates(id(7), 9));
    }
}
