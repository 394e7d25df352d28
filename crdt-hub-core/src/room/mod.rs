//! The room without its task: [`core`] takes a peer's decoded messages and
//! says which frames go to whom, [`held`] keeps what waits for what it
//! builds on (cut by `gaps`), and [`presence`] decides whose awareness
//! states a room takes. The server's room owner task drives them.

pub mod core;
mod gaps;
pub mod held;
pub mod presence;

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
