//! Attaching a document to a multiplexed socket: its provider's token is
//! checked, the room joined, and the messages that came before the token
//! (held meanwhile) handled.

use crdt_hub_core::hocuspocus::{
    Incoming, ProviderMessage, address_prefix, authenticated, document_of, permission_denied,
};
use crdt_store::RoomName;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, warn};

use super::{Flow, Held, MAX_ENDED, MAX_HELD_BYTES, MAX_HELD_MESSAGES, Session, instant_of};
use crate::close;
use crate::connection::new_peer_id;
use crate::grant::{Grant, grant_for_token};
use crate::hocuspocus::document::{Attached, MAX_WAITING_ACKS, forward};
use crate::metrics;
use crate::room::{Access, OutboxLimits, RoomUnavailable};
use tokio::time::Instant;

impl Session {
    /// Keeps a message for a document whose token has not come yet.
    pub(super) fn hold(&mut self, incoming: Incoming, len: usize) -> Flow {
        let new_address = !self.held.contains_key(&incoming.address);
        if self.held_messages >= MAX_HELD_MESSAGES
            || self.held_bytes + len > MAX_HELD_BYTES
            || (new_address && self.held.len() >= self.app.connection.max_documents)
        {
            warn!(
                address = incoming.address,
                held = self.held_messages,
                held_bytes = self.held_bytes,
                "too much sent for documents without a token; closing"
            );
            return Err(Some(close::UNAUTHENTICATED_BACKLOG));
        }
        self.held_messages += 1;
        self.held_bytes += len;
        self.held
            .entry(incoming.address)
            .or_insert_with(|| Held {
                since: Instant::now(),
                messages: Vec::new(),
            })
            .messages
            .push((incoming.message, len));
        Ok(())
    }

    /// The messages held for `address`, no longer counted.
    pub(super) fn take_held(&mut self, address: &str) -> Vec<(ProviderMessage, usize)> {
        let held = self
            .held
            .remove(address)
            .map(|h| h.messages)
            .unwrap_or_default();
        self.held_messages -= held.len();
        self.held_bytes -= held.iter().map(|(_, len)| len).sum::<usize>();
        held
    }

    /// A provider sent its token for `address`: check it, join the room,
    /// and answer (authenticated, or permission denied with the reason).
    pub(super) async fn attach(&mut self, address: String, token: &str) -> Flow {
        if self.documents.contains_key(&address) {
            // As Hocuspocus: a provider recreated in a hurry.
            debug!(address, "token for a document already attached; ignored");
            return Ok(());
        }
        self.ended.remove(&address);
        match self.admit(&address, token) {
            Ok((room, grant)) => {
                let joined = self.join(address.clone(), room, grant).await;
                // Attached even when the answer could not be written: what
                // came before the token still goes in.
                if self.documents.contains_key(&address) {
                    let held = self.take_held(&address);
                    for (message, _) in held {
                        Box::pin(self.on_message(Incoming {
                            address: address.clone(),
                            message,
                        }))
                        .await?;
                    }
                }
                joined
            }
            Err(reason) => {
                self.take_held(&address);
                self.deny(address, &reason).await
            }
        }
    }

    /// The checks before joining, each refusal with the reason the
    /// provider is told.
    fn admit(&self, address: &str, token: &str) -> Result<(RoomName, Grant), String> {
        let max_documents = self.app.connection.max_documents;
        if self.documents.len() >= max_documents {
            return Err(format!(
                "this connection has {max_documents} documents open (--max-documents-per-connection)"
            ));
        }
        let room = RoomName::parse(document_of(address))
            .map_err(|e| format!("invalid document name: {e}"))?;
        let grant = grant_for_token(&self.app, token, &room).map_err(|e| e.to_string())?;
        if let Some(addr) = self.peer_addr
            && self.app.limits.refusals.check(addr.ip(), &room).is_err()
        {
            return Err(
                "this room refused your last updates (see the close reason); wait before reconnecting"
                    .into(),
            );
        }
        if self.app.rooms.connections(&room) >= self.app.room_max_connections {
            metrics::rate_limited("max_connections_per_room");
            return Err("room is at its connection limit (--max-connections-per-room)".into());
        }
        Ok((room, grant))
    }

    async fn deny(&mut self, address: String, reason: &str) -> Flow {
        let frame = permission_denied(&address, reason);
        if self.ended.len() < MAX_ENDED {
            self.ended.insert(address);
        }
        self.send_now(frame).await
    }

    async fn join(&mut self, address: String, room: RoomName, grant: Grant) -> Flow {
        let config = &self.app.connection;
        let outbox = OutboxLimits {
            frames: config.outbox_capacity,
            bytes: config.outbox_max_bytes,
        };
        let prefix = address_prefix(&address);
        let (link, inbox) =
            crate::room::multiplexed_link(outbox, self.ws.get_ref().shared(), prefix.clone());
        let inbox_handle = inbox.handle();
        let peer = new_peer_id();
        let handle = match Box::pin(self.app.rooms.join(&room, peer, grant.access, link)).await {
            Ok(handle) => handle,
            Err(RoomUnavailable::ShuttingDown) => return Err(Some(close::SHUTTING_DOWN)),
            Err(refused) => return self.deny(address, &refused.to_string()).await,
        };
        // Before the room's first frame (its sync step 1), which the
        // document's task sends once started below.
        let answer = authenticated(&address, grant.access == Access::ReadOnly);
        let answered = self.send_now(answer).await;
        if let Err(Some(reason)) = answered {
            handle.leave(peer).await;
            return Err(Some(reason));
        }
        if answered.is_ok() {
            // The answer is in the socket: the room's frames may follow.
            inbox_handle.allow_direct_writes();
        }
        // A failed write (`Err(None)`: the client is gone) still attaches
        // the document: what the client sent for it before it went is read
        // and taken once the session ends (`Session::take_what_arrived`).
        let registered = self
            .app
            .sessions
            .register(peer, room.clone(), grant.holder.clone());
        let (acks, ack_queue) = mpsc::channel(MAX_WAITING_ACKS);
        let forwarder = tokio::spawn(
            forward(
                address.clone(),
                prefix,
                inbox,
                registered.closer.clone(),
                ack_queue,
                self.out.clone(),
            )
            .in_current_span(),
        );
        let document = Attached {
            room: handle,
            name: room,
            peer,
            access: grant.access,
            access_ends: grant.deadline.map(instant_of),
            sub: grant.holder.sub.clone(),
            acks,
            _registered: registered,
            forwarder,
            inbox: inbox_handle,
        };
        debug!(address, room = %document.name, "document attached");
        self.connection_event(true, &document);
        self.documents.insert(address, document);
        answered
    }

    pub(super) fn connection_event(&self, opened: bool, document: &Attached) {
        if let Some(hooks) = self.app.rooms.webhooks() {
            hooks.connection(
                opened,
                &document.name,
                document.peer,
                document.sub.as_deref(),
                document.access == Access::ReadWrite,
            );
        }
    }
}
