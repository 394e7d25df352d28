//! Stateless messages (Hocuspocus): application strings that are not part
//! of the document and are never stored. A provider's goes to the room's
//! event feed and webhooks (where an application decides what to do with
//! it, as a Hocuspocus `onStateless` hook would); one posted to the API
//! goes to every Hocuspocus provider in the room, on every node.

use std::sync::Arc;

use bytes::Bytes;
use crdt_hub_core::hocuspocus::kind;
use yrs::encoding::write::Write;

use super::{Loaded, RoomTask};
use crate::room::core::PeerId;
use crate::room::request::RoomEvent;

impl RoomTask {
    /// A provider's stateless message.
    pub(super) fn on_stateless(&self, state: &mut Loaded, peer: PeerId, payload: String) {
        if !state.links.contains_key(&peer) {
            return; // it left, or was closed, meanwhile
        }
        if let Some(hooks) = &self.webhooks {
            hooks.stateless(&self.name, peer, &payload);
        }
        if let Some(events) = &state.events {
            let _ = events.send(RoomEvent::Stateless {
                payload: Arc::from(payload),
            });
        }
    }

    /// A stateless message posted to this node's API: for the peers here,
    /// and through the bus for those on other nodes. Returns how many here
    /// it was queued for.
    pub(super) fn broadcast_stateless(&self, state: &mut Loaded, payload: &str) -> usize {
        if let Some(bus) = &self.bus {
            bus.publish_stateless(payload);
        }
        self.send_stateless(state, payload)
    }

    /// Queues `payload` for every peer here that takes stateless messages;
    /// a peer whose queue is full is closed as a slow consumer, as for any
    /// frame. Returns how many it was queued for.
    pub(super) fn send_stateless(&self, state: &mut Loaded, payload: &str) -> usize {
        // The frame after the address, which the peer's connection adds.
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.write_var(kind::STATELESS);
        frame.write_string(payload);
        let frame = Bytes::from(frame);
        let mut slow = Vec::new();
        let mut delivered = 0;
        for (&peer, link) in &state.links {
            if !link.takes_stateless() {
                continue;
            }
            match link.send_all(&[&frame]) {
                Ok(_) => delivered += 1,
                Err(full) => slow.push((peer, full)),
            }
        }
        self.evict_slow(state, slow);
        delivered
    }
}
