//! Updates that arrived before what they build on.
//!
//! yrs keeps the part of an update it cannot integrate yet (its left item
//! or parent has not arrived) in a "pending" update of its own, merging
//! each new remainder into it, and `encode_state_as_update` sends that
//! pending update along to whoever syncs. In yrs 0.28.1 the merge can
//! corrupt the pending blocks: the `convergence` fuzz target found two
//! overlapping skips that shift every later block's clock, so a client
//! syncing from the room received the same edits under wrong ids and
//! diverged for good (`fuzz/regressions/convergence/`).
//!
//! yrs also integrates a block that arrives before earlier blocks of its
//! client, leaving a Skip placeholder for the hole; a later block that
//! fills the hole and overruns it makes yrs 0.28.1 subtract with overflow
//! (a panic in debug builds, a corrupt block list in release; found by the
//! same target, `regressions/convergence/`).
//!
//! So a document here never keeps yrs's pending state and never
//! integrates out of order. An update that starts past what the document
//! has of one of its clients is held without being applied; after each
//! apply the pending part is pruned and the whole raw update is held
//! instead. Held updates are applied again once something new has
//! integrated; yrs skips the parts it already has. Nothing is lost
//! meanwhile: the caller journals the raw update when it arrives, and it is
//! sent on to peers once complete, so that they too receive every update
//! after what it builds on.

use std::collections::VecDeque;

use bytes::Bytes;
use tracing::warn;
use yrs::error::UpdateError;
use yrs::updates::decoder::Decode;
use yrs::{Doc, IdSet, ReadTxn, StateVector, Transact, TransactionMut, Update, WriteTxn};

use crate::protocol::DocUpdate;

/// At most this many updates are held per document; past it the oldest is
/// let go (it stays in storage and with its sender). Every held update is
/// applied again whenever the document grows, so this also bounds that work.
const MAX_HELD_UPDATES: usize = 256;

/// At most this many bytes of held updates per document.
const MAX_HELD_BYTES: usize = 4 << 20;

/// Raw updates waiting for their dependencies, oldest first.
#[derive(Debug, Default)]
pub struct HeldUpdates {
    updates: VecDeque<Bytes>,
    bytes: usize,
}

impl HeldUpdates {
    pub fn len(&self) -> usize {
        self.updates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// The held updates, oldest first, as they arrived (Yjs v1).
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.updates.iter()
    }

    /// Applies `update` (whose encoding is `raw`) to `doc`; whatever of it
    /// cannot integrate yet is held, and held updates that now can are
    /// integrated.
    ///
    /// # Errors
    /// yrs's error when the update does not apply; nothing is held then.
    pub fn apply(&mut self, doc: &Doc, update: Update, raw: &[u8]) -> Result<Applied, UpdateError> {
        let had_held = !self.is_empty();
        let before = doc.transact().state_vector();
        let (new, complete) = if starts_within(&before, &update) {
            let Integrated { complete, changed } = integrate(doc, update)?;
            (changed || !complete, complete)
        } else {
            (true, false)
        };
        if !complete {
            // Copied only here: holding is rare, applying is not.
            self.hold(Bytes::copy_from_slice(raw));
        }
        let released = if had_held && doc.transact().state_vector() != before {
            self.retry(doc)
        } else {
            Vec::new()
        };
        Ok(Applied {
            new,
            complete,
            released,
        })
    }

    /// Applies a peer's consecutive updates in one transaction and returns
    /// what they integrated as one update: a burst read off one socket
    /// costs one transaction, one journal row and one frame per peer,
    /// without merging the raw updates (yrs's merge re-sorts its inputs
    /// for every block it writes).
    ///
    /// Only for a document that holds nothing. Updates are taken while each
    /// starts within what the document has; the first that does not, and
    /// everything after it, come back in [`AppliedTogether::rest`] for
    /// [`Self::apply`]. One that integrates only in part is held, as
    /// [`Self::apply`] would, and ends the run there.
    pub fn apply_together(&mut self, doc: &Doc, updates: Vec<DocUpdate>) -> AppliedTogether {
        debug_assert!(self.is_empty(), "held updates need apply's retries");
        let mut txn = doc.transact_mut();
        // The document's clocks, kept up to date from what each update
        // inserts: reading them from yrs costs a map of every client the
        // document ever had, per update.
        let mut have = txn.state_vector();
        let mut updates = updates.into_iter();
        let mut together = AppliedTogether::default();
        for next in updates.by_ref() {
            let inserted = next.update.insertions(true);
            if !runs_start_within(&have, &inserted) {
                together.rest.push(next);
                break;
            }
            match apply_in(&mut txn, next.update) {
                Err(error) => {
                    together.error = Some(error);
                    break;
                }
                Ok(false) => {
                    self.hold(next.encoded.clone());
                    together.held = Some(next.encoded);
                    break;
                }
                Ok(true) => {}
            }
            // Complete, so each run now ends the document's clock (or is
            // behind it).
            for (client, runs) in inserted.iter() {
                for run in runs.iter() {
                    have.set_max(*client, run.end);
                }
            }
        }
        together.rest.extend(updates);
        // What went in before a failure too: the document has it, so
        // storage and the other peers must as well.
        if txn.has_changes() {
            together.integrated = Some(Bytes::from(txn.encode_update_v1()));
        }
        together
    }

    fn hold(&mut self, raw: Bytes) {
        self.bytes += raw.len();
        self.updates.push_back(raw);
        while self.updates.len() > MAX_HELD_UPDATES || self.bytes > MAX_HELD_BYTES {
            let Some(oldest) = self.updates.pop_front() else {
                break;
            };
            self.bytes -= oldest.len();
            crate::metrics::held_update_released();
            warn!(
                bytes = oldest.len(),
                "too many updates wait for missing dependencies; the oldest stays in storage only until the room reloads or its sender resyncs"
            );
        }
    }

    /// Applies every held update that now can be again, until a pass
    /// integrates nothing new; returns those that are now complete.
    fn retry(&mut self, doc: &Doc) -> Vec<Bytes> {
        let mut released = Vec::new();
        loop {
            let before = doc.transact().state_vector();
            let waiting = std::mem::take(&mut self.updates);
            self.bytes = 0;
            for raw in waiting {
                // It decoded when it arrived, so it does now; one that
                // failed to apply would not apply later either.
                let Ok(update) = Update::decode_v1(&raw) else {
                    continue;
                };
                if !starts_within(&doc.transact().state_vector(), &update) {
                    self.bytes += raw.len();
                    self.updates.push_back(raw);
                    continue;
                }
                match integrate(doc, update) {
                    Ok(Integrated { complete: true, .. }) => released.push(raw),
                    Ok(Integrated {
                        complete: false, ..
                    }) => {
                        self.bytes += raw.len();
                        self.updates.push_back(raw);
                    }
                    Err(_) => {}
                }
            }
            if self.updates.is_empty() || doc.transact().state_vector() == before {
                return released;
            }
        }
    }
}

/// What [`HeldUpdates::apply`] did with an update.
#[derive(Debug)]
pub struct Applied {
    /// It brought something: it changed the document or is held. One that
    /// did not, a duplicate, need not be stored or sent on.
    pub new: bool,
    /// It is in the document entirely (not held).
    pub complete: bool,
    /// Held updates that it completed, oldest first (Yjs v1 as received).
    pub released: Vec<Bytes>,
}

/// What [`HeldUpdates::apply_together`] did with a run of updates.
#[derive(Debug, Default)]
pub struct AppliedTogether {
    /// Everything the run changed in the document, as one Yjs v1 update;
    /// `None` when it brought nothing new.
    pub integrated: Option<Bytes>,
    /// The update that integrated only in part and is now held (as
    /// received); its integrated part is in `integrated`.
    pub held: Option<Bytes>,
    /// The updates not tried, in order.
    pub rest: Vec<DocUpdate>,
    /// yrs's error for the update that failed; those after it are in `rest`.
    pub error: Option<UpdateError>,
}

/// Whether every run of blocks in `update` starts at or before the end of
/// what a document at `have` has of its client, so that yrs integrates
/// nothing out of order. A run after a gap inside the update (a Skip block: a Yjs client
/// sends those with structs it holds pending itself) counts too: yrs would
/// integrate it behind a placeholder as well.
fn starts_within(have: &StateVector, update: &Update) -> bool {
    runs_start_within(have, &update.insertions(true))
}

/// [`starts_within`] for an update's insertions.
fn runs_start_within(have: &StateVector, inserted: &IdSet) -> bool {
    inserted.iter().all(|(client, runs)| {
        let clock = have.get(client);
        runs.iter().all(|run| run.start <= clock)
    })
}

/// What applying one update did.
struct Integrated {
    /// All of it integrated: nothing is left waiting.
    complete: bool,
    /// It inserted or deleted something.
    changed: bool,
}

/// Applies `update` in one transaction (see [`apply_in`]).
fn integrate(doc: &Doc, update: Update) -> Result<Integrated, UpdateError> {
    let mut txn = doc.transact_mut();
    let complete = apply_in(&mut txn, update)?;
    // Not from the before and after state vectors: each is a map of every
    // client the document has.
    let changed = txn.has_changes();
    Ok(Integrated { complete, changed })
}

/// Applies `update` in `txn` and prunes whatever yrs left pending, also
/// when it failed part-way; returns whether all of it integrated.
fn apply_in(txn: &mut TransactionMut, update: Update) -> Result<bool, UpdateError> {
    let applied = txn.apply_update(update);
    let complete = !txn.has_missing_updates();
    if !complete {
        txn.prune_pending();
    }
    applied.map(|()| complete)
}

/// A document's state without anything held, as one Yjs v1 update: the
/// parts of held updates that already integrated are in it, the rest is not
/// (nor, unlike `encode_state_as_update_v1`, yrs's pending data).
pub fn encode_integrated(doc: &Doc, since: &StateVector) -> Vec<u8> {
    doc.transact().encode_diff_v1(since)
}

#[cfg(test)]
mod tests {
    use yrs::{GetString, Text};

    use super::*;
    use crate::room::core::doc_from_updates;

    /// Two updates of one client, the second typed after the first.
    fn two_edits() -> (Vec<u8>, Vec<u8>) {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        let first = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "ab");
            txn.encode_update_v1()
        };
        let second = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 2, "cd");
            txn.encode_update_v1()
        };
        (first, second)
    }

    fn text_of(doc: &Doc) -> String {
        let text = doc.get_or_insert_text("t");
        text.get_string(&doc.transact())
    }

    fn apply(held: &mut HeldUpdates, doc: &Doc, raw: &[u8]) -> bool {
        held.apply(doc, Update::decode_v1(raw).unwrap(), raw)
            .unwrap()
            .new
    }

    #[test]
    fn a_duplicate_brings_nothing_new() {
        let (first, second) = two_edits();
        let doc = Doc::new();
        let mut held = HeldUpdates::default();
        assert!(apply(&mut held, &doc, &second), "held counts as new");
        assert!(apply(&mut held, &doc, &first));
        assert!(!apply(&mut held, &doc, &first));
        assert!(!apply(&mut held, &doc, &second));
        let deletion = {
            let t = doc.get_or_insert_text("t");
            let mut txn = doc.transact_mut();
            t.remove_range(&mut txn, 0, 1);
            txn.encode_update_v1()
        };
        let other = Doc::new();
        apply(&mut held, &other, &first);
        assert!(apply(&mut held, &other, &deletion), "a deletion is new");
        assert!(!apply(&mut held, &other, &deletion));
    }

    #[test]
    fn an_update_before_its_dependency_is_held_then_integrated() {
        let (first, second) = two_edits();
        let doc = Doc::new();
        let mut held = HeldUpdates::default();

        let early = held
            .apply(&doc, Update::decode_v1(&second).unwrap(), &second)
            .unwrap();
        assert!(early.new && !early.complete);
        assert_eq!(held.len(), 1);
        assert!(!doc.transact().has_missing_updates(), "yrs keeps nothing");
        assert_eq!(text_of(&doc), "");
        // What a syncing peer is sent holds nothing that is not integrated.
        let sent = Update::decode_v1(&encode_integrated(&doc, &StateVector::default())).unwrap();
        assert_eq!(sent.state_vector(), StateVector::default());

        let filling = held
            .apply(&doc, Update::decode_v1(&first).unwrap(), &first)
            .unwrap();
        assert!(filling.complete);
        assert_eq!(filling.released, vec![Bytes::from(second.clone())]);
        assert!(held.is_empty());
        assert_eq!(text_of(&doc), "abcd");
    }

    #[test]
    fn a_stored_document_keeps_what_it_holds_in_its_state() {
        let (first, second) = two_edits();
        let stored = doc_from_updates([second.as_slice()]).unwrap();
        assert_eq!(stored.held.len(), 1);

        // An export or a saved version still carries the held update.
        let state = stored.encode_state().unwrap();
        let doc = Doc::new();
        let mut held = HeldUpdates::default();
        apply(&mut held, &doc, &state);
        apply(&mut held, &doc, &first);
        assert_eq!(text_of(&doc), "abcd");

        let in_order = doc_from_updates([first.as_slice(), second.as_slice()]).unwrap();
        assert!(in_order.held.is_empty());
        assert_eq!(text_of(&in_order.doc), "abcd");
    }

    #[test]
    fn an_update_with_a_gap_inside_waits_until_the_gap_is_filled() {
        // Three edits of one client; the first and third merged into one
        // update have a gap (a Skip block) where the second goes.
        let doc = Doc::with_client_id(8);
        let text = doc.get_or_insert_text("t");
        let edits: Vec<Vec<u8>> = ["ab", "cd", "ef"]
            .iter()
            .map(|s| {
                let mut txn = doc.transact_mut();
                let end = text.len(&txn);
                text.insert(&mut txn, end, s);
                txn.encode_update_v1()
            })
            .collect();
        let gapped = yrs::merge_updates_v1([edits[0].as_slice(), edits[2].as_slice()]).unwrap();

        let room = Doc::new();
        let mut held = HeldUpdates::default();
        apply(&mut held, &room, &edits[0]);
        assert!(apply(&mut held, &room, &gapped));
        assert_eq!(held.len(), 1, "its run after the gap starts past the room");
        assert_eq!(text_of(&room), "ab");
        let filling = held
            .apply(&room, Update::decode_v1(&edits[1]).unwrap(), &edits[1])
            .unwrap();
        assert_eq!(filling.released, vec![Bytes::from(gapped)]);
        assert_eq!(text_of(&room), "abcdef");
    }

    #[test]
    fn held_updates_are_capped() {
        let doc = Doc::new();
        let mut held = HeldUpdates::default();
        // Each update of a client whose first item never arrives waits.
        let source = Doc::with_client_id(9);
        let text = source.get_or_insert_text("t");
        text.insert(&mut source.transact_mut(), 0, "x");
        for i in 0..MAX_HELD_UPDATES + 10 {
            let mut txn = source.transact_mut();
            text.insert(&mut txn, 0, &i.to_string());
            let raw = txn.encode_update_v1();
            drop(txn);
            apply(&mut held, &doc, &raw);
        }
        assert_eq!(held.len(), MAX_HELD_UPDATES);
    }
}
