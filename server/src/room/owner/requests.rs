//! Requests from the HTTP API, the snapshot tools and restores: answered
//! from the room's own document, in turn with its peers' frames.

use tokio::sync::{broadcast, oneshot};
use tracing::{error, info, warn};

use super::{EVENT_BUFFER, Loaded, RoomTask, RoomUnavailable};
use crate::close;
use crate::protocol::DocUpdate;
use crate::room::core::RoomError;
use crate::room::request::{
    Accepted, RequestFailed, RoomInfo, RoomReply, RoomRequest, Subscription,
};

impl RoomTask {
    pub(super) fn on_request(
        &mut self,
        state: &mut Loaded,
        request: RoomRequest,
        done: oneshot::Sender<Result<RoomReply, RoomUnavailable>>,
    ) {
        let reply = match request {
            RoomRequest::Info => RoomReply::Info(RoomInfo {
                connections: state.links.len(),
                document_bytes: state.room.encode_state().len(),
                state_vector: state.room.state_vector_v1(),
                unsaved_updates: state.room.unsaved_updates(),
                last_change: state.last_change,
                held_updates: state.room.held().len(),
                held_bytes: state.room.held().bytes(),
            }),
            RoomRequest::State(sv) => RoomReply::State(state.room.encode_diff(sv.as_ref())),
            RoomRequest::Json => RoomReply::Json(crate::doc_json::doc_to_json(state.room.doc())),
            RoomRequest::Apply(update) => self.apply_external(state, update),
            RoomRequest::Transform(transform) => match transform(state.room.doc()) {
                Ok(None) => RoomReply::Applied(Accepted {
                    new: false,
                    waiting: false,
                }),
                Ok(Some(encoded)) => match DocUpdate::decode(encoded) {
                    Ok(update) => self.apply_external(state, update),
                    Err(e) => {
                        error!(error = %e, "transform produced an update that does not decode");
                        RoomReply::Failed(RequestFailed::ComputedUpdateInvalid(e))
                    }
                },
                Err(e) => {
                    warn!(error = %e, "transform failed; nothing changed");
                    RoomReply::Failed(RequestFailed::Transform(e))
                }
            },
            RoomRequest::Snapshot { restored_from } => {
                // Recorded by the next snapshot started (this one's, or the
                // one queued behind a compaction in flight).
                state.restored_from = state.restored_from.or(restored_from);
                if state.compaction.is_none() {
                    self.start_compaction(state);
                    state.snapshot_waiters.push(done);
                } else {
                    state.queued_snapshot_waiters.push(done);
                }
                return;
            }
            RoomRequest::Subscribe => {
                let sender = state
                    .events
                    .get_or_insert_with(|| broadcast::channel(EVENT_BUFFER).0);
                RoomReply::Events(Subscription {
                    events: sender.subscribe(),
                    last_id: self.event_id(state.applied),
                })
            }
            RoomRequest::Delete => {
                for (_, link) in state.links.drain() {
                    link.close(close::ROOM_DELETED);
                }
                if let Some(compaction) = state.compaction.take() {
                    compaction.abort();
                }
                self.registration.mark_deleting();
                self.close_inbox(RoomUnavailable::Deleting);
                info!("room closed for deletion");
                RoomReply::Deleted
            }
            RoomRequest::Stateless(payload) => {
                RoomReply::Delivered(self.broadcast_stateless(state, &payload))
            }
        };
        let _ = done.send(Ok(reply));
    }

    /// Applies an update that came from outside (API, import, restore):
    /// every peer receives it. Returns whether it was applied.
    pub(super) fn apply_external(&mut self, state: &mut Loaded, update: DocUpdate) -> RoomReply {
        match state.room.apply_external(update) {
            Ok(effects) => {
                let accepted = Accepted {
                    new: !effects.applied.is_empty(),
                    waiting: effects.incomplete > 0,
                };
                self.accepted(state, &effects.applied);
                self.deliver(state, None, effects);
                RoomReply::Applied(accepted)
            }
            Err(RoomError::Apply(e)) => {
                warn!(error = %e, "external update failed to apply");
                RoomReply::Failed(RequestFailed::DoesNotApply(e))
            }
            Err(RoomError::Poisoned) => {
                self.poisoned(state);
                RoomReply::Failed(RequestFailed::Poisoned)
            }
        }
    }
}
