//! Intake: what peers and other nodes send, admitted (storage backlog,
//! `--max-doc-size`), applied, journaled, published to the cluster and to
//! event subscribers.

use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};
use yrs::{ReadTxn, Transact};

use super::{Loaded, RoomTask};
use crate::close::{self, CloseReason};
use crate::protocol::ClientMessage;
use crate::room::core::{Effects, PeerId, Rejected, RoomError};
use crate::room::request::RoomEvent;

impl RoomTask {
    pub(super) fn on_frame(
        &mut self,
        state: &mut Loaded,
        peer: PeerId,
        mut messages: Vec<ClientMessage>,
        received_at: Instant,
        stored: Option<oneshot::Sender<bool>>,
    ) {
        if !state.links.contains_key(&peer) {
            return; // evicted while its frame was queued (`stored` says no)
        }
        // The messages up to the first update storage or the size cap
        // cannot take are handled, as they would have been one by one.
        let refusal = self.admit_updates(state, peer, &mut messages);
        let all_taken = messages.is_empty() || self.receive(state, peer, messages, received_at);
        if let Some(reason) = refusal {
            self.evict(state, peer, reason);
        } else if let Some(stored) = stored
            // Refused (a read-only peer's update), or evicted for what it
            // sent: the answer is no.
            && all_taken
            && state.links.contains_key(&peer)
        {
            // An ack covers everything before it in the client's eyes,
            // including what this node only holds from the bus.
            for update in state.bus_only.take(&state.room) {
                self.journal.append(&self.name, update);
            }
            // The journal writes in order: once everything queued so far
            // is written, so are this frame's updates.
            self.journal.answer_when_written(stored);
        }
    }

    /// Cuts `messages` before the first update the journal's backlog or
    /// `--max-doc-size` refuses, and returns the reason to close the peer.
    pub(super) fn admit_updates(
        &self,
        state: &Loaded,
        peer: PeerId,
        messages: &mut Vec<ClientMessage>,
    ) -> Option<CloseReason> {
        let max_document = i64::try_from(self.config.max_document_bytes).unwrap_or(i64::MAX);
        let mut incoming = 0usize;
        for (index, message) in messages.iter().enumerate() {
            let ClientMessage::DocUpdate(update) = message else {
                continue;
            };
            let size = update.encoded.len();
            if let Err(backlog) = self.journal.check_capacity(incoming + size) {
                warn!(
                    peer,
                    pending = backlog.pending,
                    "storage backlog full; refusing the update and closing the connection"
                );
                messages.truncate(index);
                return Some(close::STORAGE_BACKLOG);
            }
            if state
                .document_bytes
                .saturating_add((incoming + size) as i64)
                > max_document
            {
                warn!(
                    peer,
                    document_bytes = state.document_bytes,
                    incoming = size,
                    "update would grow the document past --max-doc-size; refused"
                );
                messages.truncate(index);
                return Some(close::DOCUMENT_TOO_LARGE);
            }
            incoming += size;
        }
        None
    }

    /// Returns whether every update in `messages` was taken (none refused
    /// as a read-only peer's, none failed).
    pub(super) fn receive(
        &mut self,
        state: &mut Loaded,
        peer: PeerId,
        messages: Vec<ClientMessage>,
        received_at: Instant,
    ) -> bool {
        let (effects, error) = match state.room.receive(peer, messages) {
            Ok(effects) => (effects, None),
            Err(Rejected {
                error: RoomError::Poisoned,
                ..
            }) => {
                // Storage has everything up to here; the peer resyncs
                // whatever of its own did not get there.
                self.poisoned(state);
                return false;
            }
            Err(Rejected {
                error: RoomError::Apply(e),
                effects,
            }) => (*effects, Some(e)),
        };
        if let Some(ignored) = &effects.awareness_ignored {
            warn!(
                peer,
                not_owner = ignored.not_owner,
                client_cap = ignored.client_cap,
                room_bytes = ignored.room_bytes,
                "awareness entries ignored: another connection's client id, or past --max-awareness-clients / --max-awareness-room-bytes (logged once per connection; counted in crdt_hub_awareness_ignored_total)"
            );
        }
        let all_taken = effects.refused_read_only == 0 && error.is_none();
        if effects.refused_read_only > 0 {
            debug!(
                peer,
                refused = effects.refused_read_only,
                "dropped updates from read-only peer"
            );
        }
        let fanned_out = !effects.to_others.is_empty();
        self.accepted(state, &effects.applied);
        self.publish_awareness(&effects);
        self.deliver(state, Some(peer), effects);
        if fanned_out {
            crate::metrics::fanout_latency(received_at.elapsed());
        }
        if let Some(e) = error {
            warn!(peer, error = %e, "update failed to apply; closing connection");
            self.evict(state, peer, close::BAD_UPDATE);
        }
        all_taken
    }

    /// Bookkeeping for updates the room applied: journal, events,
    /// compaction threshold.
    pub(super) fn accepted(&self, state: &mut Loaded, applied: &[Bytes]) {
        if let Some(bus) = &self.bus {
            bus.publish_updates(applied);
        }
        self.accepted_from(state, applied, true);
    }

    /// [`Self::accepted`]; updates from another node (`local` false) are
    /// neither journaled (their node does that) nor published again.
    pub(super) fn accepted_from(&self, state: &mut Loaded, applied: &[Bytes], local: bool) {
        if applied.is_empty() {
            return;
        }
        let added: usize = applied.iter().map(Bytes::len).sum();
        state.document_bytes += added as i64;
        crate::metrics::document_bytes(added as i64);
        for update in applied {
            state.unsaved_bytes += update.len() as u64;
            state.applied += 1;
            if local {
                self.journal.append(&self.name, update.clone());
            }
            if let Some(events) = &state.events {
                let _ = events.send(RoomEvent::Update {
                    id: self.event_id(state.applied),
                    update: update.clone(),
                });
            }
        }
        if state
            .events
            .as_ref()
            .is_some_and(|e| e.receiver_count() == 0)
        {
            state.events = None;
        }
        state.last_change = Some(SystemTime::now());
        if local && let Some(hooks) = &self.webhooks {
            hooks.document_changed(&self.name, || state.room.state_vector_v1());
        }
        if self.log_is_long(state) {
            self.start_routine_compaction(state);
        }
    }

    pub(super) fn event_id(&self, sequence: u64) -> String {
        format!("{}-{}", self.generation, sequence)
    }

    /// Publishes the awareness changes of this node's own peers.
    pub(super) fn publish_awareness(&self, effects: &Effects) {
        if let Some(bus) = &self.bus {
            bus.publish_awareness(effects);
        }
    }

    /// Something from the cluster bus: another node's update is applied and
    /// sent to every local peer, but not journaled nor published again.
    pub(super) fn on_cluster(&mut self, state: &mut Loaded, remote: crate::cluster::Remote) {
        let Some(bus) = self.bus.as_mut() else {
            return;
        };
        let outcome = bus.handle(&mut state.room, remote);
        if outcome.deleted {
            self.deleted_elsewhere(state);
            return;
        }
        if !outcome.to_peers.is_empty() {
            let effects = Effects {
                to_others: outcome.to_peers,
                ..Effects::default()
            };
            self.deliver(state, None, effects);
        }
        if let Some(payload) = outcome.stateless {
            self.send_stateless(state, &payload);
        }
        let Some(update) = outcome.update else {
            return;
        };
        let before = state
            .bus_only
            .is_empty()
            .then(|| state.room.doc().transact().state_vector());
        match state.room.apply_external(update) {
            Ok(effects) => {
                state.bus_only.held(&effects.applied, before);
                self.accepted_from(state, &effects.applied, false);
                self.deliver(state, None, effects);
            }
            Err(RoomError::Apply(e)) => {
                warn!(error = %e, "update from another node failed to apply; ignored");
            }
            Err(RoomError::Poisoned) => self.poisoned(state),
        }
    }
}
