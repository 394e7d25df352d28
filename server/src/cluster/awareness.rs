//! Awareness states that clients of other nodes set: applied to the room's
//! `Awareness`, forwarded to local peers, and removed when their node stops
//! renewing them (it died; its clients' removals never came).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use yrs::block::ClientID;
use yrs::sync::{Awareness, Message};
use yrs::updates::decoder::Decode;

use crate::protocol;

/// When each remote client's awareness state was last renewed.
#[derive(Debug, Default)]
pub struct RemoteAwareness {
    seen: HashMap<ClientID, Instant>,
}

impl RemoteAwareness {
    /// Applies an awareness frame published by another node; returns the
    /// frame telling local peers what changed, if anything did.
    pub fn apply(
        &mut self,
        awareness: &mut Awareness,
        frame: &[u8],
        now: Instant,
    ) -> Option<Bytes> {
        let Ok(Message::Awareness(update)) = Message::decode_v1(frame) else {
            return None;
        };
        let summary = awareness.apply_update_summary(update).ok()??;
        for client in summary.added.iter().chain(&summary.updated) {
            self.seen.insert(*client, now);
        }
        for client in &summary.removed {
            self.seen.remove(client);
        }
        let changed = summary.all_changes();
        if changed.is_empty() {
            return None;
        }
        let update = awareness.update_with_clients(changed).ok()?;
        Some(protocol::encode_awareness(&update))
    }

    /// Removes remote states not renewed within `timeout` (clients of a
    /// local peer are never touched); returns the removal frame for local
    /// peers.
    pub fn expire(
        &mut self,
        awareness: &mut Awareness,
        local: &HashSet<ClientID>,
        now: Instant,
        timeout: Duration,
    ) -> Option<Bytes> {
        let expired: Vec<ClientID> = self
            .seen
            .iter()
            .filter(|(client, seen)| {
                now.duration_since(**seen) >= timeout || local.contains(client)
            })
            .map(|(client, _)| *client)
            .collect();
        let mut removed = Vec::new();
        for client in expired {
            self.seen.remove(&client);
            if !local.contains(&client) {
                awareness.remove_state(client);
                removed.push(client);
            }
        }
        if removed.is_empty() {
            return None;
        }
        let update = awareness.update_with_clients(removed).ok()?;
        Some(protocol::encode_awareness(&update))
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
    use yrs::Doc;

    fn frame_from(awareness: &Awareness, client: ClientID) -> Bytes {
        protocol::encode_awareness(&awareness.update_with_clients([client]).unwrap())
    }

    #[test]
    fn applies_renews_and_expires() {
        let remote_doc = Doc::with_client_id(7);
        let mut remote = Awareness::new(remote_doc);
        remote
            .set_local_state(serde_json::json!({"user": "ann"}))
            .unwrap();
        let me = remote.client_id();

        let mut local = Awareness::new(Doc::with_client_id(1));
        let mut tracker = RemoteAwareness::default();
        let start = Instant::now();
        let forwarded = tracker.apply(&mut local, &frame_from(&remote, me), start);
        assert!(forwarded.is_some());
        assert!(local.state::<serde_json::Value>(me).is_some());

        let timeout = Duration::from_secs(30);
        let none = HashSet::new();
        assert!(
            tracker
                .expire(&mut local, &none, start + Duration::from_secs(20), timeout)
                .is_none()
        );
        // Renewed (same state, higher clock) at 20 s: still there at 40 s.
        remote
            .set_local_state(serde_json::json!({"user": "ann"}))
            .unwrap();
        tracker.apply(
            &mut local,
            &frame_from(&remote, me),
            start + Duration::from_secs(20),
        );
        assert!(
            tracker
                .expire(&mut local, &none, start + Duration::from_secs(40), timeout)
                .is_none()
        );
        let removal = tracker.expire(&mut local, &none, start + Duration::from_secs(51), timeout);
        assert!(removal.is_some());
        assert!(local.state::<serde_json::Value>(me).is_none());
        assert!(tracker.is_empty());
    }

    #[test]
    fn never_expires_a_local_peer() {
        let mut remote = Awareness::new(Doc::with_client_id(9));
        remote
            .set_local_state(serde_json::json!({"user": "bo"}))
            .unwrap();
        let mut local = Awareness::new(Doc::with_client_id(1));
        let mut tracker = RemoteAwareness::default();
        let start = Instant::now();
        tracker.apply(&mut local, &frame_from(&remote, ClientID::new(9)), start);
        // The client moved to this node: it is a local peer now.
        let locals = HashSet::from([ClientID::new(9)]);
        let removal = tracker.expire(
            &mut local,
            &locals,
            start + Duration::from_secs(60),
            Duration::from_secs(30),
        );
        assert!(removal.is_none());
        assert!(local.state::<serde_json::Value>(ClientID::new(9)).is_some());
    }
}
