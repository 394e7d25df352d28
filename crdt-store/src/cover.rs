//! What a document state already holds, to leave out of a compaction's
//! merge the log entries that would add nothing to it.
//!
//! yrs's `merge_updates` re-sorts all of its inputs for every block it
//! writes, so merging a snapshot with the thousands of log entries it
//! replaces costs their number times the document's blocks: seconds of a
//! core for a busy document. The state a room passes to `write_snapshot`
//! already holds every update it applied and the snapshot it loaded, so
//! normally only the entries it holds back (those waiting for what they
//! build on) or that another node wrote remain to be merged, and often
//! nothing does.

use std::collections::HashMap;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

use yrs::block::ClientID;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{IdSet, Update};

/// The clock ranges of one document state: what it has inserted (its
/// blocks, deleted or not; a gap such as a Skip block is not covered) and
/// what it has deleted.
#[derive(Debug)]
pub(crate) struct StateCover {
    inserted: ClockRanges,
    deleted: ClockRanges,
    /// The state's state vector (Yjs v1), which a snapshot stores beside
    /// it: taken from this decode, so that a compaction with nothing to
    /// merge decodes the whole document once, not twice.
    state_vector: Vec<u8>,
}

impl StateCover {
    /// `None` when `state` does not decode: then nothing counts as held.
    pub(crate) fn of(state: &[u8]) -> Option<Self> {
        let update = decode(state)?;
        Some(Self {
            inserted: ClockRanges::from(&update.insertions(true)),
            deleted: ClockRanges::from(update.delete_set()),
            state_vector: update.state_vector().encode_v1(),
        })
    }

    /// The covered state's state vector, as
    /// `yrs::encode_state_vector_from_update_v1` gives it.
    pub(crate) fn into_state_vector(self) -> Vec<u8> {
        self.state_vector
    }

    /// Whether every block `update` inserts and every deletion it carries
    /// is in the state already. An update that does not decode is not held
    /// (the merge reports it as corrupt).
    pub(crate) fn holds(&self, update: &[u8]) -> bool {
        let Some(update) = decode(update) else {
            return false;
        };
        self.inserted.cover(&update.insertions(true)) && self.deleted.cover(update.delete_set())
    }
}

fn decode(bytes: &[u8]) -> Option<Update> {
    catch_unwind(AssertUnwindSafe(|| Update::decode_v1(bytes)))
        .ok()?
        .ok()
}

/// Per client, disjoint clock ranges sorted by start.
#[derive(Debug)]
struct ClockRanges(HashMap<ClientID, Vec<Range<u32>>>);

impl From<&IdSet> for ClockRanges {
    fn from(set: &IdSet) -> Self {
        let mut clients = HashMap::new();
        for (client, ranges) in set.iter() {
            let mut ranges: Vec<Range<u32>> =
                ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
            ranges.sort_unstable_by_key(|r| r.start);
            let mut joined: Vec<Range<u32>> = Vec::with_capacity(ranges.len());
            for range in ranges {
                match joined.last_mut() {
                    Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                    _ => joined.push(range),
                }
            }
            clients.insert(*client, joined);
        }
        Self(clients)
    }
}

impl ClockRanges {
    /// Whether every range of `set` lies inside one of these.
    fn cover(&self, set: &IdSet) -> bool {
        set.iter().all(|(client, ranges)| {
            let have = self.0.get(client).map_or(&[][..], Vec::as_slice);
            ranges.iter().filter(|r| !r.is_empty()).all(|r| {
                // The last range starting at or before r.start.
                let after = have.partition_point(|h| h.start <= r.start);
                after > 0 && r.end <= have[after - 1].end
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

    use super::*;

    fn edit(doc: &Doc, f: impl FnOnce(&yrs::TextRef, &mut yrs::TransactionMut)) -> Vec<u8> {
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        f(&text, &mut txn);
        txn.encode_update_v1()
    }

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn a_state_holds_the_updates_it_was_made_of_and_not_later_ones() {
        let doc = Doc::with_client_id(1);
        let typed = edit(&doc, |t, txn| t.insert(txn, 0, "hello"));
        let deleted = edit(&doc, |t, txn| t.remove_range(txn, 1, 2));
        let snapshot = state(&doc);
        let cover = StateCover::of(&snapshot).unwrap();
        let later = edit(&doc, |t, txn| t.insert(txn, 0, "x"));
        let later_delete = edit(&doc, |t, txn| t.remove_range(txn, 1, 1));

        assert!(cover.holds(&typed));
        assert!(cover.holds(&deleted));
        assert!(!cover.holds(&later), "an insertion past the state");
        assert!(
            !cover.holds(&later_delete),
            "a deletion of something the state has undeleted"
        );
        assert_eq!(
            doc.get_or_insert_text("t").get_string(&doc.transact()),
            "xlo"
        );
        assert_eq!(
            cover.into_state_vector(),
            yrs::encode_state_vector_from_update_v1(&snapshot).unwrap()
        );
    }

    #[test]
    fn another_clients_update_is_not_held() {
        let doc = Doc::with_client_id(1);
        edit(&doc, |t, txn| t.insert(txn, 0, "ab"));
        let cover = StateCover::of(&state(&doc)).unwrap();
        let other = Doc::with_client_id(2);
        let theirs = edit(&other, |t, txn| t.insert(txn, 0, "c"));
        assert!(!cover.holds(&theirs));
    }

    #[test]
    fn a_gap_in_the_state_covers_nothing() {
        // A state merged with an update that arrived before its
        // predecessor has a Skip where the predecessor goes.
        let doc = Doc::with_client_id(1);
        let first = edit(&doc, |t, txn| t.insert(txn, 0, "ab"));
        let second = edit(&doc, |t, txn| t.insert(txn, 2, "cd"));
        let third = edit(&doc, |t, txn| t.insert(txn, 4, "ef"));
        let gapped = yrs::merge_updates_v1([first.as_slice(), third.as_slice()]).unwrap();
        let cover = StateCover::of(&gapped).unwrap();
        assert!(cover.holds(&first));
        assert!(cover.holds(&third));
        assert!(!cover.holds(&second));
    }

    #[test]
    fn what_does_not_decode_is_not_held() {
        assert!(StateCover::of(&[0xff, 0xff]).is_none());
        let doc = Doc::with_client_id(1);
        edit(&doc, |t, txn| t.insert(txn, 0, "ab"));
        let cover = StateCover::of(&state(&doc)).unwrap();
        assert!(!cover.holds(&[0xff, 0xff]));
    }
}
