//! "Saved" for y-websocket clients that ask for it (`?acks=1`): once the
//! journal flush holding a client's updates has committed, the server
//! tells it so. Stock clients log a message type they do not know, so it
//! is opt-in; the demo editor uses it for its "Saving…" / "Saved" status.
//!
//! The message is type [`MESSAGE_SAVED`], then a Yjs v1 state vector as a
//! length-prefixed byte array: for each client id in the updates now
//! stored, the clock their blocks end at. Acks come in the order the
//! updates came; a client is saved once the clock for its own id has
//! reached its document's.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::oneshot;
use yrs::StateVector;
use yrs::encoding::write::Write;
use yrs::updates::encoder::Encode;

use crate::protocol::ClientMessage;

/// The message type: past y-websocket's (0–3) and Hocuspocus's (0–8).
pub const MESSAGE_SAVED: u8 = 100;

/// Batches of one connection waiting for storage, at most; past that its
/// connection is closed (1013) rather than the answers piling up.
const MAX_WAITING: usize = 4096;

/// Updates of one connection waiting for the journal, in order.
#[derive(Default)]
pub struct SavedQueue {
    waiting: FuturesOrdered<Waiting>,
}

type Waiting = std::pin::Pin<Box<dyn Future<Output = Option<StateVector>> + Send>>;

impl SavedQueue {
    /// Whether the query string asks for acks (`acks=1`).
    pub fn wanted(query: Option<&str>) -> bool {
        query
            .and_then(|q| crate::auth::query_value(q, "acks"))
            .is_some_and(|v| v == "1" || v == "true")
    }

    /// Whether as many batches wait as one connection may have waiting:
    /// the client sends faster than storage takes it (or storage is down).
    pub fn is_full(&self) -> bool {
        self.waiting.len() >= MAX_WAITING
    }

    /// Called before `messages` go to the room: when they hold updates,
    /// returns the sender the room answers once they are stored.
    pub fn expect(&mut self, messages: &[ClientMessage]) -> Option<oneshot::Sender<bool>> {
        let mut covered = StateVector::default();
        let mut updates = 0;
        for message in messages {
            if let ClientMessage::DocUpdate(update) = message {
                updates += 1;
                // Not `Update::state_vector()`: yrs counts a client there
                // only if its blocks start at clock 0, so every update
                // after a client's first would ack nothing.
                for (client, ranges) in update.update.insertions(true).iter() {
                    if let Some(end) = ranges.iter().map(|range| range.end).max() {
                        covered.set_max(*client, end);
                    }
                }
            }
        }
        if updates == 0 {
            return None;
        }
        let (stored, answer) = oneshot::channel();
        self.waiting.push_back(Box::pin(async move {
            // Refused (read-only, evicted) or dropped: no ack.
            answer.await.unwrap_or(false).then_some(covered)
        }));
        Some(stored)
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The next stored batch's message (`None` for a refused one).
    pub async fn next(&mut self) -> Option<Bytes> {
        self.waiting.next().await.flatten().map(|sv| encode(&sv))
    }
}

fn encode(covered: &StateVector) -> Bytes {
    let sv = covered.encode_v1();
    let mut out = Vec::with_capacity(sv.len() + 4);
    out.write_var(MESSAGE_SAVED);
    out.write_buf(&sv);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DocUpdate;
    use yrs::encoding::read::{Cursor, Read};
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, ReadTxn, Text, Transact};

    fn update(client: u64, text: &str) -> ClientMessage {
        let doc = Doc::with_client_id(client);
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, text);
        ClientMessage::DocUpdate(DocUpdate::decode(txn.encode_update_v1()).unwrap())
    }

    #[tokio::test]
    async fn acks_come_in_order_and_name_each_clients_end_clock() {
        let mut queue = SavedQueue::default();
        assert!(queue.expect(&[ClientMessage::AwarenessQuery]).is_none());
        let first = queue.expect(&[update(7, "abc"), update(8, "x")]).unwrap();
        let refused = queue.expect(&[update(7, "zz")]).unwrap();
        let second = queue.expect(&[update(7, "de")]).unwrap();
        // Answered out of order; delivered in order.
        second.send(true).unwrap();
        drop(refused);
        first.send(true).unwrap();
        let message = queue.next().await.unwrap();
        let mut cursor = Cursor::new(&message);
        assert_eq!(cursor.read_var::<u8>().unwrap(), MESSAGE_SAVED);
        let sv = StateVector::decode_v1(cursor.read_buf().unwrap()).unwrap();
        let get = |client| sv.get(&yrs::block::ClientID::new(client));
        assert_eq!((get(7), get(8)), (3, 1));
        assert_eq!(queue.next().await, None, "the refused batch");
        assert!(queue.next().await.is_some());
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_later_update_acks_its_end_clock() {
        let doc = Doc::with_client_id(7);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "abc");
        let before = doc.transact().state_vector();
        t.insert(&mut doc.transact_mut(), 3, "de");
        let later = doc.transact().encode_state_as_update_v1(&before);
        let mut queue = SavedQueue::default();
        queue
            .expect(&[ClientMessage::DocUpdate(DocUpdate::decode(later).unwrap())])
            .unwrap()
            .send(true)
            .unwrap();
        let message = queue.next().await.unwrap();
        let mut cursor = Cursor::new(&message);
        assert_eq!(cursor.read_var::<u8>().unwrap(), MESSAGE_SAVED);
        let sv = StateVector::decode_v1(cursor.read_buf().unwrap()).unwrap();
        assert_eq!(sv.get(&yrs::block::ClientID::new(7)), 5);
    }

    #[test]
    fn only_acks_1_asks() {
        assert!(SavedQueue::wanted(Some("token=x&acks=1")));
        assert!(!SavedQueue::wanted(Some("acks=0")));
        assert!(!SavedQueue::wanted(None));
    }
}
