//! Between a room and its [`Store`]: rebuild a document from what is stored,
//! and write a changed document back.

use std::sync::Arc;

use crdt_store::{NewSnapshot, RoomName, SnapshotId, Store, StoreError, UpdateId};
use yrs::Doc;

use crate::room::core::doc_from_updates;

/// What a room knows about its stored form, so that a later snapshot
/// replaces exactly what this room has already folded in.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoredPosition {
    /// Latest snapshot contained in the in-memory document.
    pub base: Option<SnapshotId>,
    /// Highest log entry contained in the in-memory document.
    pub through: Option<UpdateId>,
}

/// Why a room could not be loaded. The room is then not served at all:
/// an empty document in place of a stored one would be worse than none.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("storage unavailable")]
    Store(#[from] StoreError),
    #[error("stored data of room {room} is corrupt at item {index} ({detail})")]
    Corrupt {
        room: RoomName,
        index: usize,
        detail: String,
    },
}

/// Loads a room: its latest snapshot plus the log after it, merged.
///
/// # Errors
/// [`LoadError`] when storage fails or holds bytes that do not apply.
pub async fn load(
    store: &Arc<dyn Store>,
    room: &RoomName,
) -> Result<(Doc, StoredPosition), LoadError> {
    let stored = store.load(room).await?;
    let position = StoredPosition {
        base: stored.snapshot.as_ref().map(|s| s.info.id),
        through: stored.last_update_id(),
    };
    let blobs = stored
        .snapshot
        .iter()
        .map(|s| s.state.as_slice())
        .chain(stored.updates.iter().map(|u| u.data.as_slice()));
    let doc = doc_from_updates(blobs).map_err(|(index, detail)| LoadError::Corrupt {
        room: room.clone(),
        index,
        detail,
    })?;
    Ok((doc, position))
}

/// Writes the whole document as a new snapshot that folds in the log up to
/// what this room has seen.
///
/// # Errors
/// The store's error; nothing is changed in storage then.
pub async fn save_snapshot(
    store: &Arc<dyn Store>,
    room: &RoomName,
    state: &[u8],
    position: &mut StoredPosition,
    unlogged_updates: u64,
    keep: usize,
) -> Result<(), StoreError> {
    let info = store
        .write_snapshot(
            NewSnapshot {
                room,
                state,
                base: position.base,
                through: position.through,
                unlogged_updates: i64::try_from(unlogged_updates).unwrap_or(i64::MAX),
                restored_from: None,
            },
            keep,
        )
        .await?;
    position.base = Some(info.id);
    Ok(())
}
