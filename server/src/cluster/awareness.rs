//! Awareness states that clients of other nodes set: applied to the room
//! (where they cannot take a client id a local peer owns, nor a local peer
//! theirs: [`crate::room::presence`]), forwarded to local peers, and
//! removed when their node stops renewing them (it died; its clients'
//! removals never came).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use yrs::block::ClientID;
use yrs::sync::Message;
use yrs::updates::decoder::Decode;

use crate::room::Room;

/// When each remote client's awareness state was last renewed.
#[derive(Debug, Default)]
pub struct RemoteAwareness {
    seen: HashMap<ClientID, Instant>,
}

impl RemoteAwareness {
    /// Applies an awareness frame published by another node; returns the
    /// frame telling local peers what changed, if anything did.
    pub fn apply(&mut self, room: &mut Room, frame: &[u8], now: Instant) -> Option<Bytes> {
        let Ok(Message::Awareness(update)) = Message::decode_v1(frame) else {
            return None;
        };
        let applied = room.apply_remote_awareness(update);
        for client in &applied.set {
            self.seen.insert(*client, now);
        }
        for client in &applied.removed {
            self.seen.remove(client);
        }
        applied.frame()
    }

    /// Removes remote states not renewed within `timeout`; returns the
    /// removal frame for local peers.
    pub fn expire(&mut self, room: &mut Room, now: Instant, timeout: Duration) -> Option<Bytes> {
        let mut expired = Vec::new();
        self.seen.retain(|client, seen| {
            let keep = now.duration_since(*seen) < timeout;
            if !keep {
                expired.push(*client);
            }
            keep
        });
        room.expire_remote_awareness(expired)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;
    use crate::room::Access;
    use crate::room::presence::Owner;
    use yrs::Doc;
    use yrs::sync::Awareness;

    fn frame_from(awareness: &Awareness, client: ClientID) -> Bytes {
        protocol::encode_awareness(&awareness.update_with_clients([client]).unwrap())
    }

    #[test]
    fn applies_renews_and_expires() {
        let mut remote = Awareness::new(Doc::with_client_id(7));
        remote
            .set_local_state(serde_json::json!({"user": "ann"}))
            .unwrap();
        let me = remote.client_id();

        let mut room = Room::new(Doc::new());
        let mut tracker = RemoteAwareness::default();
        let start = Instant::now();
        let forwarded = tracker.apply(&mut room, &frame_from(&remote, me), start);
        assert!(forwarded.is_some());
        assert_eq!(room.presence().state(me), Some(r#"{"user":"ann"}"#));

        let timeout = Duration::from_secs(30);
        assert!(
            tracker
                .expire(&mut room, start + Duration::from_secs(20), timeout)
                .is_none()
        );
        // Renewed (same state, higher clock) at 20 s: still there at 40 s.
        remote
            .set_local_state(serde_json::json!({"user": "ann"}))
            .unwrap();
        tracker.apply(
            &mut room,
            &frame_from(&remote, me),
            start + Duration::from_secs(20),
        );
        assert!(
            tracker
                .expire(&mut room, start + Duration::from_secs(40), timeout)
                .is_none()
        );
        let removal = tracker.expire(&mut room, start + Duration::from_secs(51), timeout);
        assert!(removal.is_some());
        assert!(room.presence().state(me).is_none());
        assert_eq!(room.presence().owner(me), None, "the id is free again");
        assert!(tracker.is_empty());
    }

    #[test]
    fn a_local_peers_client_id_is_neither_taken_nor_expired_by_another_node() {
        let mut local = Awareness::new(Doc::with_client_id(9));
        local
            .set_local_state(serde_json::json!({"user": "bo"}))
            .unwrap();
        let bo = ClientID::new(9);
        let mut room = Room::new(Doc::new());
        room.join(1, Access::ReadWrite);
        let frame = frame_from(&local, bo);
        let messages = protocol::parse_frame(&frame).unwrap();
        room.receive(1, messages).unwrap();

        // Another node publishes the same id, newer: ignored here.
        let mut other = Awareness::new(Doc::with_client_id(9));
        for _ in 0..5 {
            other
                .set_local_state(serde_json::json!({"user": "mallory"}))
                .unwrap();
        }
        let mut tracker = RemoteAwareness::default();
        let start = Instant::now();
        assert!(
            tracker
                .apply(&mut room, &frame_from(&other, bo), start)
                .is_none()
        );
        assert_eq!(room.presence().state(bo), Some(r#"{"user":"bo"}"#));
        assert_eq!(room.presence().owner(bo), Some(Owner::Peer(1)));
        let removal = tracker.expire(
            &mut room,
            start + Duration::from_secs(60),
            Duration::from_secs(30),
        );
        assert!(removal.is_none());
        assert!(room.presence().state(bo).is_some());
    }
}
