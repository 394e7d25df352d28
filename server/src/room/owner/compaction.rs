//! Compaction: the room's document written as a snapshot in the
//! background, when the log grows long, on a timer, on request and at
//! unload. The room never waits for it; the journal holds every update
//! until a snapshot covers it.

use std::sync::Arc;

use crdt_store::{SnapshotInfo, StoreError};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use super::{Loaded, RoomTask};
use crate::persist;
use crate::room::request::{RoomReply, SnapshotFailed};

/// A snapshot being written in the background.
pub(super) struct Compaction {
    task: JoinHandle<Result<SnapshotInfo, StoreError>>,
    /// Unsaved updates the snapshot covers.
    updates: u64,
    bytes: u64,
    /// And of the updates other nodes sent that this one did not store.
    bus_only: super::bus_only::Covered,
}

impl Compaction {
    /// Stops it: the room is deleted or can no longer be trusted, and no
    /// snapshot of it may land.
    pub(super) fn abort(self) {
        self.task.abort();
    }

    /// Lets it finish, for at most `grace` (the journal holds its updates
    /// either way).
    pub(super) async fn settle(self, grace: std::time::Duration) {
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

impl RoomTask {
    pub(super) fn log_is_long(&self, state: &Loaded) -> bool {
        let in_flight = state.compaction.as_ref();
        let updates = state.room.unsaved_updates() - in_flight.map_or(0, |c| c.updates);
        let bytes = state.unsaved_bytes - in_flight.map_or(0, |c| c.bytes);
        updates >= self.config.snapshot_max_updates || bytes >= self.config.snapshot_max_bytes
    }

    /// A compaction of the room's own accord (timer, long log): in cluster
    /// mode only on the node holding the room's lease. Requested snapshots
    /// and the one at unload always run (concurrent compactions are safe).
    pub(super) fn start_routine_compaction(&self, state: &mut Loaded) {
        if self.bus.as_ref().is_none_or(|bus| bus.may_compact()) {
            self.start_compaction(state);
        }
    }

    /// Encodes the document and writes it as a snapshot in the background.
    pub(super) fn start_compaction(&self, state: &mut Loaded) {
        if state.compaction.is_some() {
            return;
        }
        let encoded = state.room.encode_state();
        let store = self.store.clone();
        let name = self.name.clone();
        let base = state.base;
        let keep = self.config.keep_snapshots;
        let restored_from = state.restored_from.take();
        let task = tokio::spawn(async move {
            persist::write_snapshot(&store, &name, &encoded, base, keep, restored_from).await
        });
        state.compaction = Some(Compaction {
            task,
            updates: state.room.unsaved_updates(),
            bytes: state.unsaved_bytes,
            bus_only: state.bus_only.covered_now(),
        });
    }

    pub(super) fn compacted(
        &self,
        state: &mut Loaded,
        result: Result<Result<SnapshotInfo, StoreError>, tokio::task::JoinError>,
    ) {
        let Some(compaction) = state.compaction.take() else {
            return;
        };
        let outcome = match result {
            Ok(Ok(info)) => {
                state.room.mark_saved(compaction.updates);
                state.bus_only.snapshot_written(compaction.bus_only);
                state.unsaved_bytes = state.unsaved_bytes.saturating_sub(compaction.bytes);
                // Our own snapshot may contain another writer's content
                // that this document lacks: merge it again next time.
                state.base = None;
                crate::metrics::snapshot_written();
                if let Some(hooks) = &self.webhooks {
                    hooks.version_created(&self.name, info.id, info.restored_from);
                }
                crate::metrics::document_bytes(info.size - state.document_bytes);
                state.document_bytes = info.size;
                debug!(
                    snapshot = info.id,
                    bytes = info.size,
                    updates = compaction.updates,
                    "snapshot written"
                );
                Ok(info)
            }
            Ok(Err(e)) => {
                warn!(error = %e, cause = ?std::error::Error::source(&e), "writing snapshot failed; the update log still holds everything; retrying later");
                Err(SnapshotFailed::Store(Arc::new(e)))
            }
            Err(e) => {
                error!(error = %e, "snapshot task failed");
                Err(SnapshotFailed::Task(Arc::new(e)))
            }
        };
        for waiter in state.snapshot_waiters.drain(..) {
            let _ = waiter.send(Ok(RoomReply::Snapshot(outcome.clone())));
        }
        if !state.queued_snapshot_waiters.is_empty() {
            self.start_compaction(state);
            state.snapshot_waiters = std::mem::take(&mut state.queued_snapshot_waiters);
        }
    }
}

/// Resolves when the compaction in flight (if any) finishes; never, if none.
pub(super) async fn compaction_done(
    compaction: &mut Option<Compaction>,
) -> Result<Result<SnapshotInfo, StoreError>, tokio::task::JoinError> {
    match compaction {
        Some(compaction) => (&mut compaction.task).await,
        None => std::future::pending().await,
    }
}
