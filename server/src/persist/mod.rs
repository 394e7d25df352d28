//! Between rooms and their [`Store`]: rebuilding a document from what is
//! stored, the group-commit journal every accepted update goes through, and
//! compacted snapshots.

pub mod journal;

use std::sync::Arc;

use crdt_store::{NewSnapshot, RoomName, SnapshotId, SnapshotInfo, Store, StoreError};

use crate::room::core::{StoredDoc, StoredUpdateError, doc_from_updates_with};
use crate::room::held::HeldCaps;

pub use journal::{Backlogged, Journal, JournalConfig, JournalStatus, JournalTask};

/// Why a room could not be loaded. The room is then not served at all:
/// an empty document in place of a stored one would be worse than none.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("storage unavailable")]
    Store(#[from] StoreError),
    #[error("stored data of room {room} is corrupt: {source}")]
    Corrupt {
        room: RoomName,
        source: StoredUpdateError,
    },
}

/// A room as loaded from storage.
pub struct LoadedRoom {
    pub doc: StoredDoc,
    /// The snapshot the document contains (`None` when part of it is held,
    /// so that the next compaction folds that snapshot in again).
    pub base: Option<SnapshotId>,
    /// Bytes read: the snapshot plus the log entries.
    pub stored_bytes: usize,
}

/// Loads a room: its latest snapshot plus the log after it, merged, with
/// what waits for what it builds on held up to a room's caps.
///
/// # Errors
/// [`LoadError`] when storage fails or holds bytes that do not apply.
pub async fn load(store: &Arc<dyn Store>, room: &RoomName) -> Result<LoadedRoom, LoadError> {
    load_with(store, room, HeldCaps::ROOM).await
}

/// [`load`] with nothing let go from what waits: for offline tools, whose
/// output (an export, a version) must carry everything stored.
///
/// # Errors
/// As [`load`].
pub async fn load_whole(store: &Arc<dyn Store>, room: &RoomName) -> Result<LoadedRoom, LoadError> {
    load_with(store, room, HeldCaps::NONE).await
}

async fn load_with(
    store: &Arc<dyn Store>,
    room: &RoomName,
    caps: HeldCaps,
) -> Result<LoadedRoom, LoadError> {
    let stored = store.load(room).await?;
    let base = stored.snapshot.as_ref().map(|s| s.info.id);
    let stored_bytes = stored.snapshot.as_ref().map_or(0, |s| s.state.len())
        + stored.updates.iter().map(|u| u.data.len()).sum::<usize>();
    let blobs = stored
        .snapshot
        .iter()
        .map(|s| s.state.as_slice())
        .chain(stored.updates.iter().map(|u| u.data.as_slice()));
    let doc = doc_from_updates_with(blobs, caps).map_err(|source| LoadError::Corrupt {
        room: room.clone(),
        source,
    })?;
    Ok(LoadedRoom {
        base: base.filter(|_| doc.held.is_empty()),
        doc,
        stored_bytes,
    })
}

/// Writes `state` (the room's whole document) as a compacted snapshot that
/// folds in every log entry of the room.
///
/// `base` is the snapshot `state` is known to contain: only one read by
/// [`load`] qualifies. After this node's own snapshot the store may have
/// merged in another writer's content that `state` lacks, so that snapshot
/// must be merged again next time (callers pass `None`).
///
/// `restored_from` marks the snapshot as the result of restoring that
/// version (see [`crate::restore`]).
///
/// # Errors
/// The store's error; nothing is changed in storage then.
pub async fn write_snapshot(
    store: &Arc<dyn Store>,
    room: &RoomName,
    state: &[u8],
    base: Option<SnapshotId>,
    keep: usize,
    restored_from: Option<SnapshotId>,
) -> Result<SnapshotInfo, StoreError> {
    store
        .write_snapshot(
            NewSnapshot {
                room,
                state,
                base,
                through: Some(crdt_store::UpdateId::MAX),
                unlogged_updates: 0,
                restored_from,
            },
            keep,
        )
        .await
}
