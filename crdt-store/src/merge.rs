//! The one piece of Yjs the store needs: folding several v1 updates into one
//! snapshot, shared by both backends so that they compact identically.

use std::panic::{AssertUnwindSafe, catch_unwind};

use yrs::Update;
use yrs::updates::decoder::Decode;

use crate::cover::StateCover;
use crate::rows::{LatestRow, UpdateRow};
use crate::{NewSnapshot, RoomName, SnapshotId, StoreError, UpdateId};

/// Where a blob being merged came from, to say which one is corrupt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// The state the caller of `write_snapshot` passed in.
    Caller,
    /// A snapshot already stored.
    Snapshot(SnapshotId),
    /// A log entry holding one update.
    Update(UpdateId),
    /// The update at this position (from 1) of a log entry holding several.
    Packed(UpdateId, usize),
}

impl Origin {
    fn describe(self) -> String {
        match self {
            Origin::Caller => "the state passed to write_snapshot".to_string(),
            Origin::Snapshot(id) => format!("snapshot {id}"),
            Origin::Update(id) => format!("log entry {id}"),
            Origin::Packed(id, nth) => format!("update {nth} of log entry {id}"),
        }
    }
}

/// A merged document: one Yjs v1 update and its state vector.
#[derive(Debug)]
pub(crate) struct Merged {
    pub state: Vec<u8>,
    pub state_vector: Vec<u8>,
}

/// The snapshot `write_snapshot` stores, computed the same way by every
/// backend from what it read inside its transaction.
#[derive(Debug)]
pub(crate) struct Compacted {
    pub merged: Merged,
    /// Cumulative update count of the new snapshot.
    pub update_count: i64,
}

/// Folds `new.state`, the latest stored snapshot (its `state` is `None` when
/// it is `new.base`, i.e. already contained in `new.state`) and the log
/// entries deleted by this compaction into one snapshot.
///
/// # Errors
/// [`StoreError::Corrupt`] when any of them does not decode.
pub(crate) async fn compact(
    new: &NewSnapshot<'_>,
    latest: Option<LatestRow>,
    mut folded: Vec<UpdateRow>,
) -> Result<Compacted, StoreError> {
    folded.sort_unstable_by_key(|row| row.id);
    let folded_count = folded
        .iter()
        .fold(0i64, |sum, row| sum.saturating_add(row.update_count));
    let previous_count = latest.as_ref().map_or(0, |row| row.update_count);

    let mut parts = Vec::with_capacity(2 + folded.len());
    parts.push((Origin::Caller, new.state.to_vec()));
    if let Some(LatestRow {
        id,
        state: Some(state),
        ..
    }) = latest
    {
        parts.push((Origin::Snapshot(id), state));
    }
    for row in folded {
        let (id, packed) = (row.id, row.update_count > 1);
        let updates = row.into_updates(new.room)?;
        parts.extend(updates.into_iter().enumerate().map(|(k, data)| {
            let origin = if packed {
                Origin::Packed(id, k + 1)
            } else {
                Origin::Update(id)
            };
            (origin, data)
        }));
    }

    Ok(Compacted {
        merged: merge(new.room, parts).await?,
        update_count: previous_count
            .saturating_add(folded_count)
            .saturating_add(new.unlogged_updates.max(0)),
    })
}

/// `keep` as a SQL LIMIT for pruning: the newest snapshot is always kept.
pub(crate) fn keep_limit(keep: usize) -> i64 {
    i64::try_from(keep.max(1)).unwrap_or(i64::MAX)
}

/// Merges `parts` (Yjs v1 updates) into one update.
///
/// Runs on the blocking pool: decoding and re-encoding a large document is
/// CPU work that would otherwise stall the runtime's worker thread. A panic
/// inside yrs (which still panics on some malformed input) is caught and
/// reported as corrupt data instead of killing the caller.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the first part that does not decode (or
/// that makes yrs panic).
pub(crate) async fn merge(
    room: &RoomName,
    parts: Vec<(Origin, Vec<u8>)>,
) -> Result<Merged, StoreError> {
    let room = room.clone();
    match tokio::task::spawn_blocking(move || merge_blocking(&room, parts)).await {
        Ok(result) => result,
        // The closure catches its own panics, so the task was cancelled: the
        // runtime is shutting down. Nothing was written; retrying may work.
        Err(join_error) => Err(StoreError::Database(sqlx::Error::Io(
            std::io::Error::other(format!("snapshot merge did not run: {join_error}")),
        ))),
    }
}

fn merge_blocking(
    room: &RoomName,
    mut parts: Vec<(Origin, Vec<u8>)>,
) -> Result<Merged, StoreError> {
    // Log entries and a snapshot the caller's state holds add nothing (see
    // `cover`); usually that is all of them, and nothing is merged.
    if let Some((Origin::Caller, state)) = parts.first()
        && let Some(cover) = StateCover::of(state)
    {
        parts.retain(|(origin, data)| matches!(origin, Origin::Caller) || !cover.holds(data));
        if let [(Origin::Caller, _)] = parts.as_slice()
            && let Some((_, state)) = parts.pop()
        {
            return Ok(Merged {
                state,
                state_vector: cover.into_state_vector(),
            });
        }
    }
    let parts = parts.as_slice();
    let merged = catch_unwind(AssertUnwindSafe(|| {
        let state = yrs::merge_updates_v1(parts.iter().map(|(_, data)| data.as_slice()))?;
        let state_vector = yrs::encode_state_vector_from_update_v1(&state)?;
        Ok::<_, yrs::encoding::read::Error>(Merged {
            state,
            state_vector,
        })
    }));
    match merged {
        Ok(Ok(merged)) => Ok(merged),
        // Only on failure: decode the parts one by one to name the culprit.
        Ok(Err(_)) | Err(_) => Err(find_corrupt(room, parts)),
    }
}

fn find_corrupt(room: &RoomName, parts: &[(Origin, Vec<u8>)]) -> StoreError {
    for (origin, data) in parts {
        match catch_unwind(|| Update::decode_v1(data)) {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return StoreError::Corrupt {
                    room: room.clone(),
                    what: origin.describe(),
                    source: Some(source),
                };
            }
            Err(_) => {
                return StoreError::Corrupt {
                    room: room.clone(),
                    what: format!("{} (the Yjs decoder panicked)", origin.describe()),
                    source: None,
                };
            }
        }
    }
    StoreError::Corrupt {
        room: room.clone(),
        what: "every part decodes, but merging them failed".to_string(),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

    use super::*;

    fn text_update(client: u64, text: &str) -> Vec<u8> {
        let doc = Doc::with_client_id(client);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, text);
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[tokio::test]
    async fn merges_and_names_corrupt_parts() {
        let room = RoomName::parse("r").unwrap();
        let merged = merge(
            &room,
            vec![
                (Origin::Caller, text_update(1, "a")),
                (Origin::Update(7), text_update(2, "b")),
            ],
        )
        .await
        .unwrap();
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&merged.state).unwrap())
            .unwrap();
        assert_eq!(
            doc.get_or_insert_text("t")
                .get_string(&doc.transact())
                .len(),
            2
        );
        assert_eq!(
            merged.state_vector,
            yrs::encode_state_vector_from_update_v1(&merged.state).unwrap()
        );

        let err = merge(
            &room,
            vec![
                (Origin::Caller, text_update(1, "a")),
                (Origin::Update(9), vec![0xff, 0xff, 0xff]),
            ],
        )
        .await
        .unwrap_err();
        match err {
            StoreError::Corrupt { what, .. } => assert_eq!(what, "log entry 9"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
