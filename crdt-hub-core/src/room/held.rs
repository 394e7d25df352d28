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
//! integrates out of order. An update is cut where, for some client, it
//! starts past what the document has (`gaps::split`); what comes before
//! the cut integrates at once, so nothing complete ever waits for what is
//! missing. What yrs still cannot integrate (an id it builds on is
//! missing) is pruned from yrs and held here as an update of its own, with
//! what it needs (`gaps::needs`), and retried only once the document
//! reaches one of those clocks. Nothing is lost meanwhile: the caller
//! journals every update as it arrived, and compaction keeps in storage
//! whatever a snapshot of the document does not hold.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use tracing::warn;
use yrs::block::ClientID;
use yrs::error::UpdateError;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, IdSet, ReadTxn, StateVector, Transact, TransactionMut, Update, WriteTxn};

use crate::protocol::DocUpdate;
use crate::room::gaps;

/// At most this many updates are held per document; past it the oldest is
/// let go (it stays in storage and with its sender).
pub const MAX_HELD_UPDATES: usize = 256;

/// At most this many bytes of held updates per document.
pub const MAX_HELD_BYTES: usize = 4 << 20;

/// How much a document may hold before the oldest part is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldCaps {
    pub updates: usize,
    pub bytes: usize,
}

impl HeldCaps {
    /// A room's: [`MAX_HELD_UPDATES`] and [`MAX_HELD_BYTES`].
    pub const ROOM: Self = Self {
        updates: MAX_HELD_UPDATES,
        bytes: MAX_HELD_BYTES,
    };
    /// Nothing let go: for offline tools that read one stored room whole
    /// (an export must carry everything stored).
    pub const NONE: Self = Self {
        updates: usize::MAX,
        bytes: usize::MAX,
    };
}

impl Default for HeldCaps {
    fn default() -> Self {
        Self::ROOM
    }
}

/// Parts of updates waiting for what they build on.
#[derive(Debug, Default)]
pub struct HeldUpdates {
    caps: HeldCaps,
    /// By arrival, oldest first: the order they are let go in past the caps.
    pieces: BTreeMap<u64, Piece>,
    /// `(client, clock, piece)`: the piece is worth another try once the
    /// document has `clock` of `client`. Looked up by the clients an
    /// update advanced, so that an update nobody waits for costs nothing.
    wakeups: BTreeSet<(u64, u32, u64)>,
    bytes: usize,
    next_id: u64,
    /// Pieces let go past the caps, for rate-limiting the warning.
    evicted: u64,
}

/// One held part of an update.
#[derive(Debug)]
struct Piece {
    /// Yjs v1: exactly what the document lacks of the update it came from.
    update: Bytes,
    /// What it waits for (see `gaps::needs`).
    needs: Vec<(ClientID, u32)>,
}

/// A held part and what it waits for, for reports.
#[derive(Debug, Clone)]
pub struct Waiting<'a> {
    pub update: &'a Bytes,
    /// `(client, clock)` pairs; reaching any one makes it worth a retry.
    pub needs: &'a [(ClientID, u32)],
}

impl HeldUpdates {
    pub fn with_caps(caps: HeldCaps) -> Self {
        let mut held = Self::default();
        held.caps = caps;
        held
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The held parts, oldest first (Yjs v1).
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.pieces.values().map(|p| &p.update)
    }

    /// The held parts with what each waits for, oldest first.
    pub fn waiting(&self) -> impl Iterator<Item = Waiting<'_>> {
        self.pieces.values().map(|p| Waiting {
            update: &p.update,
            needs: &p.needs,
        })
    }

    /// Applies `update` (whose encoding is `raw`) to `doc`: whatever of it
    /// can integrate does, the rest is held, and held parts it completes
    /// integrate too.
    ///
    /// # Errors
    /// yrs's error when the update does not apply; nothing is held then.
    pub fn apply(
        &mut self,
        doc: &Doc,
        update: Update,
        raw: &Bytes,
    ) -> Result<Applied, UpdateError> {
        let have = doc.transact().state_vector();
        let taken = self.take_in(doc, update, raw, &have, None)?;
        let mut applied = Applied {
            new: taken.sent.is_some() || taken.held,
            complete: taken.complete,
            to_send: taken.sent.into_iter().collect(),
        };
        self.wake(doc, &taken.advanced, &mut applied.to_send);
        Ok(applied)
    }

    /// Applies a peer's consecutive updates in one transaction and returns
    /// what they integrated as one update: a burst read off one socket
    /// costs one transaction, one journal row and one frame per peer,
    /// without merging the raw updates (yrs's merge re-sorts its inputs
    /// for every block it writes).
    ///
    /// Updates are taken while each starts within what the document has;
    /// the first that does not, and everything after it, come back in
    /// [`AppliedTogether::rest`] for [`Self::apply`]. One that integrates
    /// only in part has its rest held, as [`Self::apply`] would, and ends
    /// the run there.
    pub fn apply_together(&mut self, doc: &Doc, updates: Vec<DocUpdate>) -> AppliedTogether {
        let mut together = AppliedTogether::default();
        // Clocks the run reaches, to wake what waits for them; only worth
        // collecting when something waits.
        let mut advanced = Vec::new();
        let waking = !self.is_empty();
        {
            let mut txn = doc.transact_mut();
            // The document's clocks, kept up to date from what each update
            // inserts: reading them from yrs costs a map of every client
            // the document ever had, per update.
            let mut have = txn.state_vector();
            let mut updates = updates.into_iter();
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
                        let have = txn.state_vector();
                        self.hold_rest_of(&next.encoded, &have, None);
                        if waking {
                            advanced.extend(
                                inserted
                                    .iter()
                                    .map(|(client, _)| (*client, have.get(client))),
                            );
                        }
                        together.held = Some(next.encoded);
                        break;
                    }
                    Ok(true) => {}
                }
                // Complete, so each run now ends the document's clock (or
                // is behind it).
                for (client, runs) in inserted.iter() {
                    for run in runs.iter() {
                        have.set_max(*client, run.end);
                        if waking {
                            advanced.push((*client, run.end));
                        }
                    }
                }
            }
            together.rest.extend(updates);
            // What went in before a failure too: the document has it, so
            // storage and the other peers must as well.
            if txn.has_changes() {
                together.integrated = Some(Bytes::from(txn.encode_update_v1()));
            }
        }
        self.wake(doc, &advanced, &mut together.released);
        together
    }

    /// Integrates what of `update` (encoded as `raw`) can integrate now
    /// and holds the rest. `have` is the document's state vector. A piece
    /// being retried keeps its `id` (for the first part of it held again;
    /// see [`Self::hold`]).
    fn take_in(
        &mut self,
        doc: &Doc,
        update: Update,
        raw: &Bytes,
        have: &StateVector,
        id: Option<u64>,
    ) -> Result<TakenIn, UpdateError> {
        let inserted = update.insertions(true);
        if runs_start_within(have, &inserted) {
            return self.integrate(doc, update, raw, &inserted, true, id);
        }
        // It passed the guard to get here, and its parts are its own
        // structs re-framed; should either not walk or decode, it is held
        // whole rather than lost.
        let split = gaps::split(raw, have).unwrap_or_else(|_| gaps::Split {
            ready: None,
            waiting: Some(raw.to_vec()),
        });
        let ready = split.ready.and_then(|ready| {
            let update = Update::decode_v1(&ready).ok()?;
            Some((Bytes::from(ready), update))
        });
        let mut taken = match ready {
            Some((ready, update)) => {
                let inserted = update.insertions(true);
                self.integrate(doc, update, &ready, &inserted, false, id)?
            }
            None => TakenIn::default(),
        };
        if let Some(waiting) = split.waiting {
            let have = doc.transact().state_vector();
            taken.held |= self.hold(Bytes::from(waiting), &have, id);
            taken.complete = false;
        }
        Ok(taken)
    }

    /// Applies `update` (encoded as `raw`, every run starting within the
    /// document) in one transaction; holds what yrs could not integrate.
    /// `whole` says `raw` is all of what the caller took in, so that when
    /// all of it integrates it can be sent on as it came.
    fn integrate(
        &mut self,
        doc: &Doc,
        update: Update,
        raw: &Bytes,
        inserted: &IdSet,
        whole: bool,
        id: Option<u64>,
    ) -> Result<TakenIn, UpdateError> {
        let mut txn = doc.transact_mut();
        let complete = apply_in(&mut txn, update)?;
        let changed = txn.has_changes();
        let mut taken = TakenIn {
            complete,
            ..TakenIn::default()
        };
        if complete {
            taken.sent = changed.then(|| {
                if whole {
                    raw.clone()
                } else {
                    Bytes::from(txn.encode_update_v1())
                }
            });
            // Each run now ends the document's clock (or is behind it).
            for (client, runs) in inserted.iter() {
                if let Some(end) = runs.iter().map(|r| r.end).max() {
                    taken.advanced.push((*client, end));
                }
            }
            return Ok(taken);
        }
        taken.sent = changed.then(|| Bytes::from(txn.encode_update_v1()));
        let have = txn.state_vector();
        drop(txn);
        taken.held = self.hold_rest_of(raw, &have, id);
        taken.advanced.extend(
            inserted
                .iter()
                .map(|(client, _)| (*client, have.get(client))),
        );
        Ok(taken)
    }

    /// Holds what a document at `have` lacks of `raw`, which it could not
    /// integrate entirely. Returns whether that is new.
    fn hold_rest_of(&mut self, raw: &[u8], have: &StateVector, id: Option<u64>) -> bool {
        // Only the blocks past what the document has: `raw` may be a
        // whole stored snapshot held up by one missing id.
        let rest = yrs::diff_updates_v1(raw, &have.encode_v1()).unwrap_or_else(|_| raw.to_vec());
        self.hold(Bytes::from(rest), have, id)
    }

    /// Holds `update`, which a document at `have` cannot integrate (yet).
    /// Returns whether it is new (not held already).
    ///
    /// A retried piece's `id` goes to the first part held of it; a second
    /// part takes a new one (so counts as the newest for the caps). A retry can leave two parts: `take_in` cuts
    /// the piece, integrates the ready part, and holds both what of that
    /// part yrs could not integrate (it builds on an id in the waiting
    /// part) and the waiting part. Held under one id, the second replaced
    /// the first, which was then lost from memory (its wakeups and bytes
    /// left behind): the `convergence` fuzz target found a replica that
    /// never integrated a client's item that way.
    fn hold(&mut self, update: Bytes, have: &StateVector, id: Option<u64>) -> bool {
        if self.pieces.values().any(|p| p.update == update) {
            return false;
        }
        let needs = gaps::needs(&update, have);
        if needs.is_empty() {
            // Nothing the document could gain would let it in: it is
            // redundant or cannot apply. Storage keeps it as it came.
            return false;
        }
        let id = match id {
            Some(id) if !self.pieces.contains_key(&id) => id,
            _ => {
                self.next_id += 1;
                self.next_id
            }
        };
        for (client, clock) in &needs {
            self.wakeups.insert((client.get(), *clock, id));
        }
        self.bytes += update.len();
        self.pieces.insert(id, Piece { update, needs });
        crate::metrics::held_updates(1);
        while self.pieces.len() > self.caps.updates || self.bytes > self.caps.bytes {
            let Some((&oldest, _)) = self.pieces.first_key_value() else {
                break;
            };
            let Some(piece) = self.remove(oldest) else {
                break;
            };
            self.evicted += 1;
            crate::metrics::held_update_evicted();
            // The 1st, 10th, 100th and every 1000th: a writer that sends
            // thousands of gapped updates must not flood the log.
            if matches!(self.evicted, 1 | 10 | 100) || self.evicted.is_multiple_of(1000) {
                warn!(
                    bytes = piece.update.len(),
                    evicted = self.evicted,
                    "too many updates wait for missing dependencies; the oldest is let go from memory (storage keeps it until what it needs arrives)"
                );
            }
        }
        self.pieces.contains_key(&id)
    }

    fn remove(&mut self, id: u64) -> Option<Piece> {
        let piece = self.pieces.remove(&id)?;
        for (client, clock) in &piece.needs {
            self.wakeups.remove(&(client.get(), *clock, id));
        }
        self.bytes -= piece.update.len();
        crate::metrics::held_updates(-1);
        Some(piece)
    }

    /// Pieces that wait for clocks the document now has, given that it
    /// reached `advanced` (client, clock) pairs.
    fn due(&self, advanced: &[(ClientID, u32)], due: &mut BTreeSet<u64>) {
        for (client, clock) in advanced {
            let client = client.get();
            due.extend(
                self.wakeups
                    .range((client, 0, 0)..=(client, *clock, u64::MAX))
                    .map(|(_, _, id)| *id),
            );
        }
    }

    /// Retries, oldest first, every piece the document may now take, and
    /// those that what they bring in makes due; what integrates is added to
    /// `sent`.
    fn wake(&mut self, doc: &Doc, advanced: &[(ClientID, u32)], sent: &mut Vec<Bytes>) {
        if self.is_empty() || advanced.is_empty() {
            return;
        }
        let mut due = BTreeSet::new();
        self.due(advanced, &mut due);
        while let Some(id) = due.pop_first() {
            let Some(piece) = self.remove(id) else {
                continue;
            };
            let have = doc.transact().state_vector();
            let Ok(update) = Update::decode_v1(&piece.update) else {
                warn!("a held update no longer decodes; let go");
                continue;
            };
            match self.take_in(doc, update, &piece.update, &have, Some(id)) {
                Ok(taken) => {
                    sent.extend(taken.sent);
                    self.due(&taken.advanced, &mut due);
                }
                // It decoded and applied in part before; yrs refusing it
                // now means it never will.
                Err(error) => warn!(%error, "a held update no longer applies; let go"),
            }
        }
    }
}

impl Drop for HeldUpdates {
    fn drop(&mut self) {
        if !self.pieces.is_empty() {
            crate::metrics::held_updates(-(self.pieces.len() as i64));
        }
    }
}

/// What [`HeldUpdates::take_in`] did.
#[derive(Debug, Default)]
struct TakenIn {
    /// What integrated, for the other peers: the update as it came when
    /// all of it did, otherwise what the transaction changed.
    sent: Option<Bytes>,
    /// Something new is held.
    held: bool,
    /// Nothing of it is held.
    complete: bool,
    /// Clients whose clock may have grown, with a clock the document now
    /// has of each.
    advanced: Vec<(ClientID, u32)>,
}

/// What [`HeldUpdates::apply`] did with an update.
#[derive(Debug)]
pub struct Applied {
    /// It brought something: it changed the document or something of it is
    /// held. One that did not, a duplicate, need not be stored or sent on.
    pub new: bool,
    /// It is in the document entirely (nothing of it held).
    pub complete: bool,
    /// What went into the document, in order, for the other peers: the
    /// update as it came when all of it integrated (otherwise its part
    /// that did), then held parts it let in.
    pub to_send: Vec<Bytes>,
}

/// What [`HeldUpdates::apply_together`] did with a run of updates.
#[derive(Debug, Default)]
pub struct AppliedTogether {
    /// Everything the run changed in the document, as one Yjs v1 update;
    /// `None` when it brought nothing new.
    pub integrated: Option<Bytes>,
    /// The update that integrated only in part and whose rest is now held
    /// (as received); its integrated part is in `integrated`.
    pub held: Option<Bytes>,
    /// Held parts the run let in, after `integrated`.
    pub released: Vec<Bytes>,
    /// The updates not tried, in order.
    pub rest: Vec<DocUpdate>,
    /// yrs's error for the update that failed; those after it are in `rest`.
    pub error: Option<UpdateError>,
}

/// Whether every run of blocks in an update's insertions starts at or
/// before the end of what a document at `have` has of its client, so that
/// yrs integrates nothing out of order. A run after a gap inside the update
/// (a Skip block: a Yjs client sends those with structs it holds pending
/// itself) counts too: yrs would integrate it behind a placeholder as well.
fn runs_start_within(have: &StateVector, inserted: &IdSet) -> bool {
    inserted.iter().all(|(client, runs)| {
        let clock = have.get(client);
        runs.iter().all(|run| run.start <= clock)
    })
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
        let e = edits(7, &["ab", "cd"]);
        (e[0].clone(), e[1].clone())
    }

    /// One update per piece of text, appended by `client`.
    fn edits(client: u64, pieces: &[&str]) -> Vec<Vec<u8>> {
        crate::room::appended_edits(client, pieces)
    }

    fn text_of(doc: &Doc) -> String {
        let text = doc.get_or_insert_text("t");
        text.get_string(&doc.transact())
    }

    fn applied(held: &mut HeldUpdates, doc: &Doc, raw: &[u8]) -> Applied {
        let raw = Bytes::copy_from_slice(raw);
        held.apply(doc, Update::decode_v1(&raw).unwrap(), &raw)
            .unwrap()
    }

    fn apply(held: &mut HeldUpdates, doc: &Doc, raw: &[u8]) -> bool {
        applied(held, doc, raw).new
    }

    /// The text of a fresh replica that received `frames`.
    fn text_after(frames: &[Bytes]) -> String {
        let doc = Doc::new();
        for frame in frames {
            doc.transact_mut()
                .apply_update(Update::decode_v1(frame).unwrap())
                .unwrap();
        }
        text_of(&doc)
    }

    #[test]
    fn a_duplicate_brings_nothing_new() {
        let (first, second) = two_edits();
        let doc = Doc::new();
        let mut held = HeldUpdates::default();
        assert!(apply(&mut held, &doc, &second), "held counts as new");
        assert!(!apply(&mut held, &doc, &second), "held already");
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

        let early = applied(&mut held, &doc, &second);
        assert!(early.new && !early.complete);
        assert!(early.to_send.is_empty(), "nothing of it integrated");
        assert_eq!(held.len(), 1);
        assert!(!doc.transact().has_missing_updates(), "yrs keeps nothing");
        assert_eq!(text_of(&doc), "");
        // What a syncing peer is sent holds nothing that is not integrated.
        let sent = Update::decode_v1(&encode_integrated(&doc, &StateVector::default())).unwrap();
        assert_eq!(sent.state_vector(), StateVector::default());

        let filling = applied(&mut held, &doc, &first);
        assert!(filling.complete);
        assert_eq!(filling.to_send.len(), 2, "the update, then what it let in");
        assert_eq!(filling.to_send[0], Bytes::from(first));
        assert_eq!(text_after(&filling.to_send), "abcd");
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
    fn a_gap_never_hides_what_comes_before_it() {
        // Three edits of one client; the first and third merged into one
        // update have a gap (a Skip block) where the second goes.
        let e = edits(8, &["ab", "cd", "ef"]);
        let gapped = yrs::merge_updates_v1([e[0].as_slice(), e[2].as_slice()]).unwrap();

        let room = Doc::new();
        let mut held = HeldUpdates::default();
        let taken = applied(&mut held, &room, &gapped);
        assert!(taken.new && !taken.complete);
        assert_eq!(text_of(&room), "ab", "what precedes the gap is in");
        assert_eq!(text_after(&taken.to_send), "ab", "and sent on");
        assert_eq!(held.len(), 1, "its run after the gap waits");

        let filling = applied(&mut held, &room, &e[1]);
        assert!(held.is_empty());
        assert_eq!(text_of(&room), "abcdef");
        let mut seen = taken.to_send.clone();
        seen.extend(filling.to_send);
        assert_eq!(text_after(&seen), "abcdef");
    }

    #[test]
    fn a_snapshot_holding_a_gap_loads_everything_complete() {
        // What compaction stored before this fix: "hello world" from one
        // client merged with another client's update that misses its
        // first part.
        let hello = edits(3, &["hello world"]);
        let other = edits(4, &["x", "y"]);
        let poisoned = yrs::merge_updates_v1([hello[0].as_slice(), other[1].as_slice()]).unwrap();
        let stored = doc_from_updates([poisoned.as_slice()]).unwrap();
        assert_eq!(text_of(&stored.doc), "hello world");
        assert_eq!(stored.held.len(), 1);
        let waiting: Vec<_> = stored.held.waiting().collect();
        assert_eq!(waiting[0].needs, &[(ClientID::new(4), 1)]);
    }

    #[test]
    fn held_parts_wake_only_for_what_they_need() {
        let doc = Doc::new();
        let mut held = HeldUpdates::default();
        let waiting = edits(9, &["a", "b"]);
        apply(&mut held, &doc, &waiting[1]);
        let mut due = BTreeSet::new();
        held.due(&[(ClientID::new(5), 1_000)], &mut due);
        assert!(due.is_empty(), "another client's progress wakes nothing");
        held.due(&[(ClientID::new(9), 0)], &mut due);
        assert!(due.is_empty());
        held.due(&[(ClientID::new(9), 1)], &mut due);
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn a_run_applied_together_wakes_what_it_completes() {
        let doc = Doc::new();
        let mut held = HeldUpdates::default();
        let e = edits(6, &["a", "b", "c", "d"]);
        apply(&mut held, &doc, &e[3]);
        let run = e[..3]
            .iter()
            .map(|u| DocUpdate {
                update: Update::decode_v1(u).unwrap(),
                encoded: Bytes::from(u.clone()),
            })
            .collect();
        let together = held.apply_together(&doc, run);
        assert!(together.rest.is_empty());
        assert!(held.is_empty());
        assert_eq!(text_of(&doc), "abcd");
        let mut sent: Vec<Bytes> = together.integrated.into_iter().collect();
        sent.extend(together.released);
        assert_eq!(text_after(&sent), "abcd");
    }

    #[test]
    fn a_retried_piece_that_splits_in_two_keeps_both_parts() {
        let (a, both, x, all) = crate::room::split_on_retry_edits();
        let doc = Doc::new();
        let mut held = HeldUpdates::default();
        apply(&mut held, &doc, &both);
        assert_eq!(held.len(), 1);
        // "x" wakes it: client 20's part ("y") is ready but still needs
        // "b", which waits for "a" in client 10's part.
        apply(&mut held, &doc, &x);
        assert_eq!(held.len(), 2, "each part held on its own");
        assert_eq!(held.bytes(), held.iter().map(Bytes::len).sum::<usize>());
        apply(&mut held, &doc, &a);
        assert!(held.is_empty() && held.wakeups.is_empty() && held.bytes() == 0);
        assert_eq!(text_of(&doc), "aby");
        assert_eq!(doc.transact().state_vector(), all.transact().state_vector());
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
        assert_eq!(held.evicted, 10);
        assert_eq!(held.wakeups.len(), MAX_HELD_UPDATES);
    }
}
