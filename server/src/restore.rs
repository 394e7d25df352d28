//! Restoring a room to one of its stored versions, losing nothing: the one
//! place that does it, for the HTTP API and the CLI alike.
//!
//! 1. The version's state is read first (writing a snapshot may prune it).
//! 2. The current state is saved as a version, `before`: what is being
//!    rolled back. Restoring `before` later undoes the restore.
//! 3. The update from `before` to the version is computed off the async
//!    runtime ([`crate::restore_diff::restore_update`] does the diff).
//! 4. It is applied, and the result saved as a version that records
//!    `restored_from`.
//!
//! [`Through::Room`] does steps 2 and 4 through the live room: connected
//! clients receive the restore like any edit, and an edit that reached the
//! room after `before` was taken is concurrent with the restore and
//! survives it. Restores of one room are serialized (the lock lives with
//! the rooms), so each one's `before` includes the previous one.
//! [`Through::Store`] does them straight in the database, for the CLI
//! without `--server`: nothing is connected to tell.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crdt_store::{PendingUpdate, RoomName, SnapshotId, SnapshotInfo, Store, StoreError};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Transact, Update};

use crate::persist::{self, Journal, LoadError};
use crate::restore_diff::{RestoreDiffError, restore_update};
use crate::room::core::{MergeHeldError, StoredDoc, StoredUpdateError, doc_from_updates};
use crate::room::{
    RequestFailed, RoomReply, RoomRequest, RoomUnavailable, Rooms, SnapshotFailed, TransformError,
};

/// Where a restore reads and writes the room.
pub enum Through<'a> {
    /// The running server's room (loaded for the purpose if need be).
    Room {
        rooms: &'a Rooms,
        journal: &'a Journal,
    },
    /// The database directly, keeping `keep` versions per room.
    Store { keep: usize },
}

/// What a restore did.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    /// The version saved just before the restore: restore it to undo.
    pub before: SnapshotId,
    /// The version saved just after, with `restored_from` set.
    pub restored: SnapshotId,
    /// Whether the content changed (false: it already equalled the version).
    pub changed: bool,
}

/// Why a restore did not happen. Nothing changed unless said otherwise.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("room {0:?} not found")]
    RoomNotFound(RoomName),
    #[error("room {room:?} has no version {version}")]
    VersionNotFound { room: RoomName, version: SnapshotId },
    #[error("storage write backlog is full; retry later")]
    Backlogged,
    /// A stored version, or the room's stored state, does not load.
    #[error("the stored {what} does not load: {source}")]
    Corrupt {
        what: &'static str,
        source: StoredUpdateError,
    },
    #[error("merging what waits in the room's stored state: {0}")]
    Held(#[from] MergeHeldError),
    #[error("computing the restore failed: {0}")]
    Compute(#[from] RestoreDiffError),
    /// The room refused the restore update; `before` was saved.
    #[error("applying the restore failed: {0}")]
    Apply(#[source] RequestFailed),
    /// Saving `before` or the restored version through the room failed.
    #[error("saving the {what} version failed: {source}")]
    Snapshot {
        what: &'static str,
        source: SnapshotFailed,
    },
    #[error("room is unavailable: {0}")]
    Unavailable(#[from] RoomUnavailable),
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    /// A worker thread panicked, or a room answered out of turn.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RestoreError {
    /// Whether the cause is in the documents (the caller may want the
    /// reason) rather than in the system.
    pub fn is_about_documents(&self) -> bool {
        matches!(
            self,
            Self::Corrupt { .. } | Self::Held(_) | Self::Compute(_) | Self::Apply(_)
        )
    }
}

impl From<LoadError> for RestoreError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Store(e) => Self::Store(e),
            LoadError::Corrupt { source, .. } => Self::Corrupt {
                what: "room state",
                source,
            },
        }
    }
}

/// Restores version `version` of room `source` into room `room` (often
/// the same room).
///
/// # Errors
/// [`RestoreError`]; with [`Through::Room`], `before` may have been saved
/// when applying fails (it is an ordinary version then).
pub async fn restore(
    store: &Arc<dyn Store>,
    through: Through<'_>,
    source: &RoomName,
    version: SnapshotId,
    room: &RoomName,
) -> Result<Restored, RestoreError> {
    let loaded = matches!(&through, Through::Room { rooms, .. } if rooms.is_loaded(source));
    if !loaded && store.room_summary(source).await?.is_none() {
        return Err(RestoreError::RoomNotFound(source.clone()));
    }
    let target = store
        .snapshot(source, version)
        .await?
        .ok_or_else(|| RestoreError::VersionNotFound {
            room: source.clone(),
            version,
        })?
        .state;
    match through {
        Through::Room { rooms, journal } => {
            let lock = rooms.restore_lock(room);
            let _serialized = lock.lock().await;
            live(store, rooms, journal, room, version, target).await
        }
        Through::Store { keep } => offline(store, keep, room, version, target).await,
    }
}

async fn live(
    store: &Arc<dyn Store>,
    rooms: &Rooms,
    journal: &Journal,
    room: &RoomName,
    version: SnapshotId,
    target: Vec<u8>,
) -> Result<Restored, RestoreError> {
    let before = room_snapshot(rooms, room, None, "before").await?;
    let before_state = saved_state(store, room, before.id).await?;
    // The decoded `before` is dropped on the blocking thread too: freeing
    // a big document (and its subdocuments) takes time of its own.
    let plan = off_runtime(move || Plan::compute(before_state, &target).map(|(plan, _)| plan));
    let plan = Arc::new(plan.await?);
    if let Some(update) = &plan.update {
        journal
            .check_capacity(update.len())
            .map_err(|_| RestoreError::Backlogged)?;
    }

    let changed = Arc::new(Mutex::new(None::<bool>));
    let reply = rooms
        .request(room, || {
            let plan = plan.clone();
            let changed = changed.clone();
            RoomRequest::Transform(Box::new(move |live: &Doc| {
                let update = plan.update_for(live)?;
                *changed.lock().expect("not poisoned") = Some(update.is_some());
                Ok(update)
            }))
        })
        .await?;
    let changed = match reply {
        RoomReply::Applied(_) => changed.lock().expect("not poisoned").unwrap_or(false),
        RoomReply::Failed(e) => return Err(RestoreError::Apply(e)),
        _ => return Err(RestoreError::Internal("unexpected room reply".into())),
    };

    let restored = room_snapshot(rooms, room, Some(version), "restored").await?;
    if let Some(hooks) = rooms.webhooks() {
        hooks.room_restored(room, version, Some(restored.id));
    }
    Ok(Restored {
        before: before.id,
        restored: restored.id,
        changed,
    })
}

async fn offline(
    store: &Arc<dyn Store>,
    keep: usize,
    room: &RoomName,
    version: SnapshotId,
    target: Vec<u8>,
) -> Result<Restored, RestoreError> {
    // Everything stored, what waits included: `before` must hold it all.
    let current = persist::load_whole(store, room).await?;
    let current_state = current.doc.encode_state()?;
    let before =
        persist::write_snapshot(store, room, &current_state, current.base, keep, None).await?;
    // What the store saved may include writes of others since the load:
    // the restore starts from exactly that.
    let before_state = saved_state(store, room, before.id).await?;
    let (update, after_state) = off_runtime(move || {
        let (plan, before) = Plan::compute(before_state, &target)?;
        let after = state_after(before, plan.update.as_deref())?;
        Ok((plan.update, after))
    })
    .await?;
    if let Some(update) = &update {
        store
            .append(&[PendingUpdate {
                room: room.clone(),
                data: Bytes::from(update.clone()),
            }])
            .await?;
    }
    let restored =
        persist::write_snapshot(store, room, &after_state, None, keep, Some(version)).await?;
    Ok(Restored {
        before: before.id,
        restored: restored.id,
        changed: update.is_some(),
    })
}

/// Asks the room for a snapshot now.
async fn room_snapshot(
    rooms: &Rooms,
    room: &RoomName,
    restored_from: Option<SnapshotId>,
    what: &'static str,
) -> Result<SnapshotInfo, RestoreError> {
    match rooms
        .request(room, || RoomRequest::Snapshot { restored_from })
        .await?
    {
        RoomReply::Snapshot(result) => {
            result.map_err(|source| RestoreError::Snapshot { what, source })
        }
        _ => Err(RestoreError::Internal("unexpected room reply".into())),
    }
}

async fn saved_state(
    store: &Arc<dyn Store>,
    room: &RoomName,
    id: SnapshotId,
) -> Result<Vec<u8>, RestoreError> {
    Ok(store
        .snapshot(room, id)
        .await?
        .ok_or_else(|| RestoreError::Internal(format!("version {id} vanished as it was saved")))?
        .state)
}

/// Decoding and diffing whole documents takes long for big ones: not on
/// the threads that serve sockets.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RestoreError> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RestoreError::Internal(format!("restore task failed: {e}")))?
}

/// The restore, computed from the `before` version.
struct Plan {
    /// `before` → version; `None` when they are equal.
    update: Option<Vec<u8>>,
    /// The whole `before` state, for a room that lacks part of it.
    before_state: Vec<u8>,
    before_snapshot: yrs::Snapshot,
}

impl Plan {
    /// The plan, and `before` as decoded (held updates and all).
    fn compute(
        before_state: Vec<u8>,
        target_state: &[u8],
    ) -> Result<(Self, StoredDoc), RestoreError> {
        let corrupt = |what| move |source| RestoreError::Corrupt { what, source };
        let before = doc_from_updates([before_state.as_slice()]).map_err(corrupt("room state"))?;
        let target = doc_from_updates([target_state]).map_err(corrupt("version"))?;
        let update = restore_update(&before.doc, &target.doc)?;
        let before_snapshot = before.doc.transact().snapshot();
        let plan = Self {
            update,
            before_state,
            before_snapshot,
        };
        Ok((plan, before))
    }

    /// The update for the live document. The room normally holds all of
    /// `before` (it wrote it); if something reached storage without going
    /// through the room (a direct import), the missing part of `before`
    /// comes along, so that the restore's edits land where they were
    /// computed.
    fn update_for(&self, live: &Doc) -> Result<Option<Vec<u8>>, TransformError> {
        let (live_sv, live_snapshot) = {
            let txn = live.transact();
            (txn.state_vector(), txn.snapshot())
        };
        let mut parts = Vec::new();
        if !contains(&live_snapshot, &self.before_snapshot) {
            parts.push(yrs::diff_updates_v1(
                &self.before_state,
                &live_sv.encode_v1(),
            )?);
        }
        parts.extend(self.update.clone());
        Ok(match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(yrs::merge_updates_v1(parts)?),
        })
    }
}

/// The whole state once `update` is applied to `before`, held updates
/// included: the restored version as stored.
fn state_after(mut before: StoredDoc, update: Option<&[u8]>) -> Result<Vec<u8>, RestoreError> {
    if let Some(update) = update {
        let decoded = Update::decode_v1(update)
            .map_err(|e| RestoreError::Internal(format!("the restore does not decode: {e}")))?;
        let raw = Bytes::copy_from_slice(update);
        before
            .held
            .apply(&before.doc, decoded, &raw)
            .map_err(|e| RestoreError::Apply(RequestFailed::DoesNotApply(e)))?;
    }
    Ok(before.encode_state()?)
}

/// Whether a document at `outer` has every item and deletion of `inner`.
fn contains(outer: &yrs::Snapshot, inner: &yrs::Snapshot) -> bool {
    let has_items = inner
        .state_map
        .iter()
        .all(|(client, clock)| outer.state_map.get(client) >= *clock);
    has_items && inner.delete_set.diff(&outer.delete_set).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, StateVector, Text};

    fn text_doc(s: &str) -> Doc {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, s);
        doc
    }

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// A document holding `update`, then `edit` inserted at `at`.
    fn applied_then_edited(update: &[u8], at: u32, edit: &str) -> Doc {
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
        if !edit.is_empty() {
            let t = doc.get_or_insert_text("t");
            t.insert(&mut doc.transact_mut(), at, edit);
        }
        doc
    }

    #[test]
    fn a_room_missing_part_of_before_receives_it_with_the_restore() {
        let version = text_doc("version");
        let before = applied_then_edited(&state(&version), 7, " then more");
        let (plan, _) = Plan::compute(state(&before), &state(&version)).unwrap();

        // A room that has only the version (the rest went to storage
        // directly) still ends at the version's content.
        let live = applied_then_edited(&state(&version), 0, "");
        let update = plan.update_for(&live).unwrap().unwrap();
        live.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        let text = live.get_or_insert_text("t");
        assert_eq!(text.get_string(&live.transact()), "version");

        // A room that has all of before gets the restore alone.
        assert_eq!(plan.update_for(&before).unwrap(), plan.update);
    }

    #[test]
    fn the_state_after_a_restore_reads_as_the_version() {
        let version = text_doc("version");
        let before = applied_then_edited(&state(&version), 0, "edited ");
        let (plan, decoded) = Plan::compute(state(&before), &state(&version)).unwrap();
        let after = state_after(decoded, plan.update.as_deref()).unwrap();
        let restored = doc_from_updates([after.as_slice()]).unwrap();
        let text = restored.doc.get_or_insert_text("t");
        assert_eq!(text.get_string(&restored.doc.transact()), "version");
    }

    #[test]
    fn a_version_that_does_not_load_is_named_as_such() {
        let before = state(&text_doc("now"));
        let Err(error) = Plan::compute(before, &[0xff, 0xff, 0xff]) else {
            panic!("a broken version computed a restore");
        };
        assert!(matches!(
            error,
            RestoreError::Corrupt {
                what: "version",
                ..
            }
        ));
        assert!(error.is_about_documents());
        assert!(error.to_string().contains("does not load"), "{error}");
    }
}
