//! Cutting an update where it stops being contiguous with a document.
//!
//! A Yjs update may carry, for some client, structs that start past what a
//! document has of that client: its earlier part never arrived (a failed
//! POST, a lost flush window, a client that sends only deltas), or it holds
//! a Skip where a Yjs client merged in structs it keeps pending itself. yrs
//! 0.28.1 would integrate such structs behind a placeholder, which later
//! updates can overrun (see `room::held`), so a document here only ever
//! integrates a client's structs in order. Holding the whole update back
//! instead would hide everything complete in it, as happened when a stored
//! snapshot held one such gap: every client joining after the room reloaded
//! received an empty document.
//!
//! So an update is cut per client: the structs up to the first that starts
//! past what the document has are ready now; that struct and everything
//! after it wait. lib0 v1 encodes each struct on its own, so both parts are
//! the original structs' bytes under new headers (no yrs merge, whose
//! handling of gaps is what the fuzzer broke).

use yrs::StateVector;
use yrs::block::ClientID;
use yrs::encoding::write::Write;

use crate::decode_guard::{self, GuardError, Layout, StructSpan};

/// An update cut against a document's state vector.
#[derive(Debug, Default)]
pub struct Split {
    /// What can integrate now: per client, the structs before the first
    /// that starts past the document (Skips the document already covers
    /// stay, as they cost nothing), and the whole delete set. `None` when
    /// that is nothing.
    pub ready: Option<Vec<u8>>,
    /// The rest, per client from that struct on; `None` when nothing waits.
    pub waiting: Option<Vec<u8>>,
}

/// Cuts `update` (a v1 update that passed the decode guard) against a
/// document that has `have`.
///
/// # Errors
/// The guard's error when `update` does not walk.
pub fn split(update: &[u8], have: &StateVector) -> Result<Split, GuardError> {
    let layout = decode_guard::layout(update)?;
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for section in &layout.sections {
        let client = ClientID::new(section.client);
        let cut = first_beyond(&section.structs, have.get(&client));
        let (before, after) = section.structs.split_at(cut);
        let before = trim_skips(before);
        if !before.is_empty() {
            ready.push((section.client, before));
        }
        let after = trim_skips(after);
        if !after.is_empty() {
            waiting.push((section.client, after));
        }
    }
    let ready = (!ready.is_empty() || !layout.deletes.is_empty())
        .then(|| encode(update, &ready, Some(&update[layout.delete_set_at..])));
    let waiting = (!waiting.is_empty()).then(|| encode(update, &waiting, None));
    Ok(Split { ready, waiting })
}

/// The index of the first struct that starts past what a document at
/// `have` plus the structs before it have of their client, or the number
/// of structs when there is none.
fn first_beyond(structs: &[StructSpan], have: u32) -> usize {
    let mut reach = have;
    for (i, s) in structs.iter().enumerate() {
        if s.skip {
            continue;
        }
        if s.clock > reach {
            return i;
        }
        reach = reach.max(s.clock.saturating_add(s.len));
    }
    structs.len()
}

/// `structs` without leading or trailing Skips: a header names the first
/// struct's clock, and a Skip at the end holds nothing.
fn trim_skips(structs: &[StructSpan]) -> &[StructSpan] {
    let start = structs
        .iter()
        .position(|s| !s.skip)
        .unwrap_or(structs.len());
    let end = structs
        .iter()
        .rposition(|s| !s.skip)
        .map_or(start, |i| i + 1);
    &structs[start..end.max(start)]
}

/// A v1 update of `sections`, each struct copied from `update`, and the
/// delete set's bytes (an empty one when `None`).
fn encode(update: &[u8], sections: &[(u64, &[StructSpan])], delete_set: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(update.len());
    out.write_var(sections.len() as u32);
    for (client, structs) in sections {
        out.write_var(structs.len() as u32);
        out.write_var(*client);
        out.write_var(structs[0].clock);
        for s in structs.iter() {
            out.extend_from_slice(&update[s.bytes.clone()]);
        }
    }
    match delete_set {
        Some(bytes) => out.extend_from_slice(bytes),
        None => out.write_var(0u32),
    }
    out
}

/// What a document at `have` must gain before `update` (one that could not
/// integrate entirely) may integrate further: `(client, clock)` pairs, any
/// one of which is worth a retry once the document's clock of `client`
/// reaches `clock`.
///
/// Per client, the first struct the document lacks waits for the
/// document to reach its own clock (a gap) or for the ids it builds on
/// that the document lacks; a deletion of items the document lacks waits
/// for the first of them. Nothing else can make a difference: yrs
/// integrates a client's structs in order and holds a struct back only for
/// a missing id.
pub fn needs(update: &[u8], have: &StateVector) -> Vec<(ClientID, u32)> {
    let Ok(layout) = decode_guard::layout(update) else {
        return Vec::new();
    };
    needs_of(&layout, have)
}

fn needs_of(layout: &Layout, have: &StateVector) -> Vec<(ClientID, u32)> {
    let lacks = |client: u64, clock: u32| clock >= have.get(&ClientID::new(client));
    let mut needs = Vec::new();
    for section in &layout.sections {
        let client = ClientID::new(section.client);
        let clock = have.get(&client);
        let Some(first) = section
            .structs
            .iter()
            .find(|s| !s.skip && s.clock.saturating_add(s.len) > clock)
        else {
            continue;
        };
        if first.clock > clock {
            needs.push((client, first.clock));
            continue;
        }
        let before = needs.len();
        for &(c, k) in first.depends_on.iter().flatten() {
            if lacks(c, k) {
                needs.push((ClientID::new(c), k.saturating_add(1)));
            }
        }
        if needs.len() == before {
            // Held back with the struct it depends on in this update:
            // that one's needs cover it, but retry on any progress too.
            needs.push((client, clock.saturating_add(1)));
        }
    }
    for &(c, k, len) in &layout.deletes {
        let client = ClientID::new(c);
        let clock = have.get(&client);
        if k.saturating_add(len) > clock {
            needs.push((client, k.max(clock).saturating_add(1)));
        }
    }
    needs.sort_unstable_by_key(|(c, k)| (c.get(), *k));
    needs.dedup_by_key(|(c, _)| *c);
    needs
}

#[cfg(test)]
mod tests {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, Text, Transact, Update};

    use super::*;

    /// Three edits of one client, one update each.
    fn edits(client: u64) -> Vec<Vec<u8>> {
        crate::room::appended_edits(client, &["ab", "cd", "ef"])
    }

    fn text_after(updates: &[&[u8]]) -> String {
        let doc = Doc::new();
        for u in updates {
            doc.transact_mut()
                .apply_update(Update::decode_v1(u).unwrap())
                .unwrap();
        }
        let text = doc.get_or_insert_text("t");
        text.get_string(&doc.transact())
    }

    fn sv(pairs: &[(u64, u32)]) -> StateVector {
        let mut sv = StateVector::default();
        for &(c, k) in pairs {
            sv.set_max(ClientID::new(c), k);
        }
        sv
    }

    #[test]
    fn a_contiguous_update_is_all_ready() {
        let e = edits(7);
        let split = split(&e[0], &StateVector::default()).unwrap();
        assert!(split.waiting.is_none());
        assert_eq!(text_after(&[&split.ready.unwrap()]), "ab");
    }

    #[test]
    fn a_gap_inside_cuts_the_update_there() {
        let e = edits(7);
        let gapped = yrs::merge_updates_v1([e[0].as_slice(), e[2].as_slice()]).unwrap();
        let split = split(&gapped, &StateVector::default()).unwrap();
        let ready = split.ready.unwrap();
        let waiting = split.waiting.unwrap();
        assert_eq!(text_after(&[&ready]), "ab");
        assert_eq!(needs(&waiting, &sv(&[(7, 2)])), vec![(ClientID::new(7), 4)]);
        assert_eq!(text_after(&[&ready, &e[1], &waiting]), "abcdef");
    }

    #[test]
    fn a_section_past_the_document_waits_whole_and_others_go_ahead() {
        let e = edits(7);
        let other = edits(8);
        let both = yrs::merge_updates_v1([e[1].as_slice(), other[0].as_slice()]).unwrap();
        let split = split(&both, &StateVector::default()).unwrap();
        assert_eq!(text_after(&[&split.ready.unwrap()]), "ab");
        let waiting = split.waiting.unwrap();
        assert_eq!(
            needs(&waiting, &StateVector::default()),
            vec![(ClientID::new(7), 2)]
        );
        assert_eq!(text_after(&[&e[0], &waiting]), "abcd");
    }

    #[test]
    fn a_gap_the_document_already_covers_does_not_cut() {
        let e = edits(7);
        let gapped = yrs::merge_updates_v1([e[0].as_slice(), e[2].as_slice()]).unwrap();
        let split = split(&gapped, &sv(&[(7, 4)])).unwrap();
        assert!(split.waiting.is_none());
        assert_eq!(text_after(&[&e[0], &e[1], &split.ready.unwrap()]), "abcdef");
    }

    #[test]
    fn an_update_whose_origin_is_missing_needs_that_id() {
        // Client 9 types after client 8's "x", which the document lacks.
        let eight = Doc::with_client_id(8);
        let x = {
            let t = eight.get_or_insert_text("t");
            let mut txn = eight.transact_mut();
            t.insert(&mut txn, 0, "x");
            txn.encode_update_v1()
        };
        let nine = Doc::with_client_id(9);
        nine.transact_mut()
            .apply_update(Update::decode_v1(&x).unwrap())
            .unwrap();
        let y = {
            let t = nine.get_or_insert_text("t");
            let mut txn = nine.transact_mut();
            t.insert(&mut txn, 1, "y");
            txn.encode_update_v1()
        };
        assert_eq!(
            needs(&y, &StateVector::default()),
            vec![(ClientID::new(8), 1)]
        );
    }

    #[test]
    fn a_deletion_of_missing_items_needs_the_first_of_them() {
        let doc = Doc::with_client_id(5);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "abcdef");
        let deletion = {
            let mut txn = doc.transact_mut();
            t.remove_range(&mut txn, 2, 3);
            txn.encode_update_v1()
        };
        assert_eq!(
            needs(&deletion, &sv(&[(5, 1)])),
            vec![(ClientID::new(5), 3)]
        );
        assert!(needs(&deletion, &sv(&[(5, 6)])).is_empty());
        // Only the delete set: nothing waits, all of it is ready.
        let split = split(&deletion, &StateVector::default()).unwrap();
        assert!(split.waiting.is_none() && split.ready.is_some());
    }
}
