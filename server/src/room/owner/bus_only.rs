//! Updates this node holds only because another node sent them over the
//! cluster bus, and has not stored itself.
//!
//! Their node journals them, unless it dies first: then they live only in
//! memory until some node's next snapshot. That is harmless until this
//! node acknowledges an edit (`?acks=1`, Hocuspocus SyncStatus), because
//! a client counts an ack cumulatively: the clock of its own id reached
//! means everything before it is stored too. A client that moved here
//! from the dead node did not send its earlier edits again (this node had
//! them already), so the ack of its next edit would cover edits no
//! database holds. Before a frame's updates are acknowledged, the room
//! therefore journals what this buffer holds, in the same flush. Stored
//! twice when their node did store them, which merging makes harmless;
//! paid only by rooms that several nodes hold and that have clients
//! waiting for acks.

use bytes::Bytes;
use tracing::warn;
use yrs::StateVector;

use crate::room::Room;

/// Past this many bytes the updates are dropped and only the state
/// vector they started from is kept: a node that is not the room's lease
/// holder never compacts it, and must not hold a copy of everything the
/// others write for each of its rooms until it unloads them. The next
/// acknowledgement then journals the difference from that state vector:
/// more bytes once, instead of memory held all along.
const MAX_HELD_BYTES: usize = 64 << 10;

#[derive(Default)]
pub(super) struct BusOnly {
    /// The document's state vector before the first of them: after an
    /// overflow, what the difference to journal is encoded from.
    since: Option<StateVector>,
    /// In the order they were applied; empty after an overflow.
    updates: Vec<Bytes>,
    bytes: usize,
    overflowed: bool,
    /// Bumped whenever the buffer empties, so that a snapshot started
    /// before can tell whether what is here came after it.
    generation: u64,
}

/// What a snapshot started at one moment covers of [`BusOnly`].
#[derive(Clone, Copy)]
pub(super) struct Covered {
    generation: u64,
    updates: usize,
}

impl BusOnly {
    /// Whether the next updates from the bus are the first since the buffer
    /// emptied: then [`Self::held`] wants the state vector ahead of them.
    pub(super) fn is_empty(&self) -> bool {
        self.since.is_none()
    }

    /// Records updates from another node that the room applied; `before`
    /// is the document's state vector ahead of them, taken when
    /// [`Self::is_empty`] said so.
    pub(super) fn held(&mut self, applied: &[Bytes], before: Option<StateVector>) {
        if applied.is_empty() {
            return;
        }
        if self.since.is_none() {
            self.since = Some(before.unwrap_or_default());
        }
        if self.overflowed {
            return;
        }
        self.updates.extend(applied.iter().cloned());
        self.bytes += applied.iter().map(Bytes::len).sum::<usize>();
        if self.bytes > MAX_HELD_BYTES {
            self.updates = Vec::new();
            self.bytes = 0;
            self.overflowed = true;
        }
    }

    /// What a snapshot of the document as it is now covers.
    pub(super) fn covered_now(&self) -> Covered {
        Covered {
            generation: self.generation,
            updates: self.updates.len(),
        }
    }

    /// A snapshot that started at `covered` has landed: what it holds need
    /// not be journaled again.
    pub(super) fn snapshot_written(&mut self, covered: Covered) {
        // Emptied since it started: all that is here came after it. After
        // an overflow only the starting state vector is known, which does
        // not say what came after the snapshot: keep it.
        if covered.generation != self.generation || self.overflowed {
            return;
        }
        let dropped: usize = self
            .updates
            .drain(..covered.updates.min(self.updates.len()))
            .map(|u| u.len())
            .sum();
        self.bytes -= dropped;
        if self.updates.is_empty() {
            self.clear();
        }
        // Otherwise `since` predates what is left: encoding from it after
        // an overflow stores a little more than needed, never less.
    }

    /// Takes what is held, as the updates to journal (usually one).
    pub(super) fn take(&mut self, room: &Room) -> Vec<Bytes> {
        let taken = if self.overflowed {
            let since = self.since.take().unwrap_or_default();
            vec![Bytes::from(room.encode_diff(Some(&since)))]
        } else {
            merge(std::mem::take(&mut self.updates))
        };
        self.clear();
        taken
    }

    fn clear(&mut self) {
        if self.since.is_some() {
            self.generation += 1;
        }
        *self = Self {
            generation: self.generation,
            ..Self::default()
        };
    }
}

/// The updates as one, for one row instead of many.
fn merge(updates: Vec<Bytes>) -> Vec<Bytes> {
    if updates.len() <= 1 {
        return updates;
    }
    match yrs::merge_updates_v1(updates.iter().map(|u| u.as_ref())) {
        Ok(merged) => vec![merged.into()],
        Err(e) => {
            // Each applied to the room, so this should not happen; the
            // journal can take them one by one all the same.
            warn!(error = %e, "merging updates from other nodes failed; storing them one by one");
            updates
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

    /// An edit of `client` appending `text`, as the bus would bring it.
    fn edit(doc: &Doc, text: &str) -> Bytes {
        let t = doc.get_or_insert_text("t");
        let before = doc.transact().state_vector();
        let mut txn = doc.transact_mut();
        let len = t.len(&txn);
        t.insert(&mut txn, len, text);
        drop(txn);
        doc.transact().encode_state_as_update_v1(&before).into()
    }

    fn text_of(updates: &[Bytes]) -> String {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        for update in updates {
            txn.apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
        }
        t.get_string(&txn)
    }

    fn receive(room: &Room, buffer: &mut BusOnly, update: Bytes) {
        let before = room.doc().transact().state_vector();
        room.doc()
            .transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        buffer.held(&[update], Some(before));
    }

    #[test]
    fn what_is_held_is_taken_once_as_one_update() {
        let room = Room::new(crate::room::core::server_doc());
        let writer = Doc::with_client_id(7);
        let mut buffer = BusOnly::default();
        assert!(buffer.take(&room).is_empty());
        receive(&room, &mut buffer, edit(&writer, "ab"));
        receive(&room, &mut buffer, edit(&writer, "cd"));
        let taken = buffer.take(&room);
        assert_eq!(taken.len(), 1, "merged into one row");
        assert_eq!(text_of(&taken), "abcd");
        assert!(buffer.take(&room).is_empty());
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_snapshot_drops_what_it_covers_and_nothing_that_came_later() {
        let room = Room::new(crate::room::core::server_doc());
        let writer = Doc::with_client_id(7);
        let mut buffer = BusOnly::default();
        receive(&room, &mut buffer, edit(&writer, "ab"));
        let snapshot = buffer.covered_now();
        receive(&room, &mut buffer, edit(&writer, "cd"));
        buffer.snapshot_written(snapshot);
        let later = buffer.take(&room);
        assert_eq!(later.len(), 1);
        // Only the update after the snapshot's start: "cd" needs "ab".
        let doc = Doc::new();
        let mut txn = doc.transact_mut();
        txn.apply_update(Update::decode_v1(&later[0]).unwrap())
            .unwrap();
        assert!(txn.store().pending_update().is_some(), "\"ab\" was dropped");

        // A snapshot that started before a take covers none of what came
        // after it.
        receive(&room, &mut buffer, edit(&writer, "ef"));
        let before_take = buffer.covered_now();
        buffer.take(&room);
        receive(&room, &mut buffer, edit(&writer, "gh"));
        buffer.snapshot_written(before_take);
        assert_eq!(buffer.take(&room).len(), 1);

        // All covered: empty again.
        receive(&room, &mut buffer, edit(&writer, "ij"));
        buffer.snapshot_written(buffer.covered_now());
        assert!(buffer.is_empty());
        assert!(buffer.take(&room).is_empty());
    }

    #[test]
    fn past_its_cap_it_encodes_from_where_it_started() {
        let room = Room::new(crate::room::core::server_doc());
        let writer = Doc::with_client_id(7);
        let stored_elsewhere = edit(&writer, "stored elsewhere.");
        receive(&room, &mut BusOnly::default(), stored_elsewhere.clone());
        let mut buffer = BusOnly::default();
        let chunk = "x".repeat(4 << 10);
        for _ in 0..(MAX_HELD_BYTES / chunk.len() + 1) {
            receive(&room, &mut buffer, edit(&writer, &chunk));
        }
        assert!(buffer.overflowed && buffer.updates.is_empty() && buffer.bytes == 0);
        // A snapshot cannot tell what of it came later: kept.
        buffer.snapshot_written(buffer.covered_now());
        let taken = buffer.take(&room);
        assert_eq!(taken.len(), 1);
        let text = text_of(&[stored_elsewhere, taken[0].clone()]);
        let held = MAX_HELD_BYTES / chunk.len() + 1;
        assert_eq!(text.len(), "stored elsewhere.".len() + held * chunk.len());
        // Not the whole document again: it starts where the buffer did.
        let doc = Doc::new();
        let mut txn = doc.transact_mut();
        txn.apply_update(Update::decode_v1(&taken[0]).unwrap())
            .unwrap();
        assert!(txn.store().pending_update().is_some());
        drop(txn);
        assert!(buffer.is_empty());
    }
}
