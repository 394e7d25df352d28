//! Anti-entropy: every sync interval a room publishes its state vector and a
//! digest of its delete set; a node holding something that state lacks
//! publishes the difference.
//!
//! A state vector alone shows missing insertions only (deleting does not
//! advance a Yjs clock), so a node that missed a pure deletion would never
//! learn of it: the delete-set digest catches that. When digests differ,
//! both nodes publish their difference (which always carries the whole
//! delete set) and the digests agree again.

use std::hash::{DefaultHasher, Hasher};

use bytes::{BufMut, Bytes, BytesMut};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact};

/// `[delete-set digest: u64 big-endian][state vector, Yjs v1]`.
pub fn encode_state(doc: &Doc) -> Bytes {
    let txn = doc.transact();
    let snapshot = txn.snapshot();
    let mut out = BytesMut::new();
    out.put_u64(digest(&snapshot.delete_set));
    out.put_slice(&snapshot.state_map.encode_v1());
    out.freeze()
}

/// What a node that published `state` lacks of `doc`, if anything.
///
/// # Errors
/// When `state` does not decode.
pub fn missing_from(doc: &Doc, state: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if state.len() < 8 {
        return Err("state message too short".into());
    }
    let (their_digest, sv) = state.split_at(8);
    let their_digest = u64::from_be_bytes(their_digest.try_into().expect("8 bytes"));
    let their_sv = StateVector::decode_v1(sv).map_err(|e| e.to_string())?;
    let txn = doc.transact();
    let snapshot = txn.snapshot();
    let lacks_insertions = snapshot
        .state_map
        .iter()
        .any(|(client, &clock)| their_sv.get(client) < clock);
    if !lacks_insertions && their_digest == digest(&snapshot.delete_set) {
        return Ok(None);
    }
    Ok(Some(txn.encode_state_as_update_v1(&their_sv)))
}

/// A digest of a delete set that does not depend on how blocks happen to
/// be split on this node: clients in order, adjacent ranges merged.
fn digest(deleted: &yrs::IdSet) -> u64 {
    let mut hasher = DefaultHasher::new();
    for (client, ranges) in deleted.iter() {
        let mut ranges: Vec<_> = ranges.iter().cloned().collect();
        ranges.sort_by_key(|r| r.start);
        let mut merged: Option<std::ops::Range<u32>> = None;
        let mut flush = |range: std::ops::Range<u32>| {
            hasher.write_u64(client.get());
            hasher.write_u32(range.start);
            hasher.write_u32(range.end);
        };
        for range in ranges {
            merged = match merged {
                Some(current) if range.start <= current.end => {
                    Some(current.start..current.end.max(range.end))
                }
                Some(current) => {
                    flush(current);
                    Some(range)
                }
                None => Some(range),
            };
        }
        if let Some(current) = merged {
            flush(current);
        }
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Text, Update};

    fn sync(from: &Doc, to: &Doc) {
        let update = from
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        to.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
    }

    #[test]
    fn equal_documents_exchange_nothing() {
        let a = Doc::new();
        a.get_or_insert_text("t")
            .insert(&mut a.transact_mut(), 0, "hello world");
        a.get_or_insert_text("t")
            .remove_range(&mut a.transact_mut(), 0, 6);
        let b = Doc::new();
        sync(&a, &b);
        assert_eq!(missing_from(&a, &encode_state(&b)).unwrap(), None);
        assert_eq!(missing_from(&b, &encode_state(&a)).unwrap(), None);
    }

    #[test]
    fn a_missed_pure_deletion_is_repaired() {
        let a = Doc::new();
        a.get_or_insert_text("t")
            .insert(&mut a.transact_mut(), 0, "hello world");
        let b = Doc::new();
        sync(&a, &b);
        // b deletes; a never hears of it. No clock moved.
        let text = b.get_or_insert_text("t");
        text.remove_range(&mut b.transact_mut(), 0, 6);
        let diff = missing_from(&b, &encode_state(&a))
            .unwrap()
            .expect("the deletion is noticed");
        a.transact_mut()
            .apply_update(Update::decode_v1(&diff).unwrap())
            .unwrap();
        let t = a.get_or_insert_text("t");
        assert_eq!(t.get_string(&a.transact()), "world");
        assert_eq!(missing_from(&b, &encode_state(&a)).unwrap(), None);
    }
}
