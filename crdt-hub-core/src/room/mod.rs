//! The room without its task: [`core`] takes a peer's decoded messages and
//! says which frames go to whom, [`held`] keeps what waits for what it
//! builds on (cut by `gaps`), [`presence`] decides whose awareness
//! states a room takes (remembering who left in [`departed`]), and
//! [`presence_batch`] holds what changed for the room's next awareness
//! message. The server's room owner task drives them.

pub mod core;
pub mod departed;
mod gaps;
pub mod held;
pub mod presence;
pub mod presence_batch;

pub use self::core::{Access, Effects, Rejected, Room, RoomError};

/// Identifies one connection within the process.
pub type PeerId = u64;

/// One update per piece of text, appended to text `t` by `client`: the
/// gap and hold tests cut and reorder these.
#[cfg(test)]
pub(crate) fn appended_edits(client: u64, pieces: &[&str]) -> Vec<Vec<u8>> {
    use yrs::{Doc, Text, Transact};
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text("t");
    pieces
        .iter()
        .map(|s| {
            let mut txn = doc.transact_mut();
            let end = text.len(&txn);
            text.insert(&mut txn, end, s);
            txn.encode_update_v1()
        })
        .collect()
}

/// Updates that make a held piece split in two when it is retried:
/// `(a, both, x, all)`. Client 10 types "a" (`a`) then "b"; client 20
/// types "x" in text `u` (`x`), then "y" after "b". `both` holds "b" and
/// "y": held until "x" wakes it, when client 20's part is ready but still
/// builds on "b" while client 10's part still waits for "a". `all` is a
/// replica with every edit, its text `t` reading "aby".
#[cfg(test)]
pub(crate) fn split_on_retry_edits() -> (Vec<u8>, Vec<u8>, Vec<u8>, yrs::Doc) {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Text, Transact, Update};
    let ten = appended_edits(10, &["a", "b"]);
    let all = Doc::with_client_id(20);
    for u in &ten {
        all.transact_mut()
            .apply_update(Update::decode_v1(u).unwrap())
            .unwrap();
    }
    let x = {
        let u = all.get_or_insert_text("u");
        let mut txn = all.transact_mut();
        u.insert(&mut txn, 0, "x");
        txn.encode_update_v1()
    };
    let y = {
        let t = all.get_or_insert_text("t");
        let mut txn = all.transact_mut();
        t.insert(&mut txn, 2, "y");
        txn.encode_update_v1()
    };
    let both = yrs::merge_updates_v1([ten[1].as_slice(), y.as_slice()]).unwrap();
    (ten[0].clone(), both, x, all)
}
