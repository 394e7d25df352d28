//! Precomputed client updates, so that the run itself only patches a
//! timestamp and writes bytes.

use yrs::{Doc, Text, Transact};

use crate::stamp;
use crate::wire::Wire;

/// The Y.Text every benchmark client edits.
pub const TEXT_NAME: &str = "bench";

/// A ready-to-send frame and where its stamp field starts.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub frame: Vec<u8>,
    pub stamp_at: usize,
}

/// `count` Yjs v1 updates from one client: each appends one stamp field to
/// the client's own text, as a user typing at the end of their paragraph.
/// The client's own items chain, so the server integrates each in O(1).
pub fn stamped_updates(client_id: u64, sender: u32, count: usize) -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(client_id);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let field = stamp::field_text(sender);
    let mut at = 0u32;
    (0..count)
        .map(|_| {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, at, &field);
            at += stamp::FIELD_LEN as u32;
            txn.encode_update_v1()
        })
        .collect()
}

/// Wraps stamped updates into frames for `wire` and finds each stamp.
///
/// # Panics
/// When an update carries no stamp field (a bug in [`stamped_updates`]).
pub fn prepare(wire: &Wire, updates: Vec<Vec<u8>>) -> Vec<Prepared> {
    updates
        .into_iter()
        .map(|update| {
            let frame = wire.update(update);
            let stamp_at = stamp::locate(&frame).expect("every update carries a stamp");
            Prepared { frame, stamp_at }
        })
        .collect()
}

/// `len` bytes of ASCII filler that is cheap to produce and not all one byte.
pub fn filler(len: usize, seed: u64) -> String {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Update};

    use super::*;
    use crate::wire::Protocol;

    #[test]
    fn prepared_frames_apply_in_order_on_a_fresh_doc() {
        let wire = Wire::new(Protocol::YWebsocket, "r");
        let frames = prepare(&wire, stamped_updates(7, 3, 4));
        let doc = Doc::new();
        let text = doc.get_or_insert_text(TEXT_NAME);
        for prepared in &frames {
            let mut frame = prepared.frame.clone();
            stamp::patch(&mut frame, prepared.stamp_at, 5);
            let update = &frame[3..]; // [sync][update][varuint len < 128]
            doc.transact_mut()
                .apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
        }
        let content = text.get_string(&doc.transact());
        assert_eq!(content.len(), 4 * stamp::FIELD_LEN);
        assert_eq!(stamp::find_all(content.as_bytes()).count(), 4);
    }
}
