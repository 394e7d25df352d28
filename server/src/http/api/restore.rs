//! `POST /api/rooms/{room}/restore`: rolls a live room back to one of its
//! stored versions, losing nothing.
//!
//! 1. The version's state is read first (writing a snapshot may prune it).
//! 2. The room writes a snapshot, `before`: the state being rolled back.
//! 3. The restore update is computed from `before` to the version, off the
//!    room's task ([`crate::restore::restore_update`]).
//! 4. The room applies it through [`RoomRequest::Transform`]: connected
//!    clients receive it like any edit. An edit that reached the room after
//!    `before` was taken is concurrent with the restore and survives it.
//! 5. The room writes a snapshot recording `restored_from`.
//!
//! Restoring `before` later undoes the restore. Restores of one room are
//! serialized, so each one's `before` includes the previous one.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use crdt_store::{RoomName, SnapshotId, SnapshotInfo};
use serde::Deserialize;
use serde_json::json;
use warp::reply::Reply;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Transact};

use super::{ApiError, ApiResult, Caller};
use crate::app::App;
use crate::room::core::doc_from_updates;
use crate::room::{RoomReply, RoomRequest};

type Room = Result<RoomName, ApiError>;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    /// A snapshot id of the room in the path.
    version: SnapshotId,
    /// Restore the version's content into this room instead.
    into: Option<String>,
}

/// What a restore did.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    /// Snapshot of the room just before the restore: restore it to undo.
    pub before: SnapshotId,
    /// Snapshot of the room just after, with `restored_from` set.
    pub restored: SnapshotId,
    /// Whether the content changed (false: it already equalled the version).
    pub changed: bool,
}

/// Largest restore request body (it is a small JSON object).
const MAX_BODY: usize = 64 << 10;

/// The request body, read up to [`MAX_BODY`] (with or without a
/// Content-Length header).
pub fn small_body()
-> impl warp::Filter<Extract = (Result<Bytes, ApiError>,), Error = warp::Rejection> + Clone {
    use warp::Filter;
    warp::body::stream().then(read_capped)
}

async fn read_capped<S, B>(stream: S) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::TryStreamExt;
    let mut stream = std::pin::pin!(stream);
    let mut body = Vec::new();
    while let Some(mut chunk) = stream
        .try_next()
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?
    {
        if body.len() + chunk.remaining() > MAX_BODY {
            return Err(ApiError::BadRequest(format!(
                "the body is larger than {MAX_BODY} bytes"
            )));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            body.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(body))
}

/// `POST /api/rooms/{room}/restore` with `{"version": ID}` or
/// `{"version": ID, "into": "other-room"}`.
pub async fn restore(
    app: &App,
    caller: &Caller,
    room: Room,
    body: Result<Bytes, ApiError>,
) -> ApiResult {
    let source = room?;
    let body = body?;
    let body: RestoreBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be JSON {{\"version\": ID}} (optionally with \"into\"): {e}"
        ))
    })?;
    let room = match body.into {
        Some(name) => RoomName::parse(name)
            .map_err(|e| ApiError::BadRequest(format!("invalid room name in \"into\": {e}")))?,
        None => source.clone(),
    };
    // The gate checked the room in the path; `into` writes another.
    if !caller.may(&room) {
        crate::metrics::auth_refused("wrong_room");
        return Err(ApiError::Forbidden(room));
    }
    let restored = restore_live(app, &source, body.version, &room).await?;
    tracing::info!(
        room = %room,
        from = %source,
        version = body.version,
        before = restored.before,
        restored = restored.restored,
        changed = restored.changed,
        "room restored to a version"
    );
    Ok(warp::reply::json(&json!({
        "room": room,
        "source_room": source,
        "version": body.version,
        "before": restored.before,
        "restored": restored.restored,
        "changed": restored.changed,
    }))
    .into_response())
}

/// Restores version `version` of room `source` into room `room` (often
/// the same) through the live room.
///
/// # Errors
/// [`ApiError::RoomNotFound`] / [`ApiError::NotFound`] for an unknown room
/// or version; otherwise storage and room errors.
pub async fn restore_live(
    app: &App,
    source: &RoomName,
    version: SnapshotId,
    room: &RoomName,
) -> Result<Restored, ApiError> {
    if !app.rooms.is_loaded(source) && app.store.room_summary(source).await?.is_none() {
        return Err(ApiError::RoomNotFound(source.clone()));
    }
    let target = app
        .store
        .snapshot(source, version)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("room {source} has no version {version}")))?;

    let lock = restore_lock(room);
    let _serialized = lock.lock().await;

    let before = snapshot(app, room, None).await.map_err(|e| match e {
        ApiError::Internal(reason) => {
            ApiError::RestoreFailed(format!("saving the state before the restore: {reason}"))
        }
        other => other,
    })?;
    let before_state = app
        .store
        .snapshot(room, before.id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("snapshot {} vanished", before.id)))?
        .state;
    let plan = tokio::task::spawn_blocking(move || Plan::compute(before_state, &target.state))
        .await
        .map_err(|e| ApiError::Internal(format!("restore task failed: {e}")))??;
    if let Some(update) = &plan.update {
        app.journal
            .check_capacity(update.len())
            .map_err(|_| ApiError::Backlogged)?;
    }

    let plan = Arc::new(plan);
    let changed = Arc::new(Mutex::new(None::<bool>));
    let reply = app
        .rooms
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
        RoomReply::Failed(reason) => return Err(ApiError::RestoreFailed(reason)),
        _ => return Err(ApiError::Internal("unexpected reply".into())),
    };

    let restored = snapshot(app, room, Some(version)).await?;
    Ok(Restored {
        before: before.id,
        restored: restored.id,
        changed,
    })
}

/// Asks the room for a snapshot now.
async fn snapshot(
    app: &App,
    room: &RoomName,
    restored_from: Option<SnapshotId>,
) -> Result<SnapshotInfo, ApiError> {
    let reply = app
        .rooms
        .request(room, || RoomRequest::Snapshot { restored_from })
        .await?;
    let RoomReply::Snapshot(result) = reply else {
        return Err(ApiError::Internal("unexpected reply".into()));
    };
    result.map_err(ApiError::Internal)
}

/// The restore computed off the room's task, from the `before` snapshot.
struct Plan {
    /// `before` → version; `None` when they are equal.
    update: Option<Vec<u8>>,
    /// The whole `before` state, for a room that lacks part of it.
    before_state: Vec<u8>,
    before: yrs::Snapshot,
}

impl Plan {
    fn compute(before_state: Vec<u8>, target_state: &[u8]) -> Result<Self, ApiError> {
        let corrupt = |(index, detail): (usize, String)| {
            ApiError::RestoreFailed(format!(
                "a stored snapshot does not load (item {index}: {detail})"
            ))
        };
        let before = doc_from_updates([before_state.as_slice()])
            .map_err(corrupt)?
            .doc;
        let target = doc_from_updates([target_state]).map_err(corrupt)?.doc;
        let update = crate::restore::restore_update(&before, &target)
            .map_err(|e| ApiError::RestoreFailed(format!("computing the restore failed: {e}")))?;
        let snapshot = before.transact().snapshot();
        Ok(Self {
            update,
            before_state,
            before: snapshot,
        })
    }

    /// The update for the live document. The room normally holds all of
    /// `before` (it wrote it); if something reached storage without going
    /// through the room (a direct import), the missing part of `before`
    /// comes along, so that the restore's edits land where they were
    /// computed.
    fn update_for(&self, live: &Doc) -> Result<Option<Vec<u8>>, String> {
        let (live_sv, live_snapshot) = {
            let txn = live.transact();
            (txn.state_vector(), txn.snapshot())
        };
        let mut parts = Vec::new();
        if !contains(&live_snapshot, &self.before) {
            let missing = yrs::diff_updates_v1(&self.before_state, &live_sv.encode_v1())
                .map_err(|e| e.to_string())?;
            parts.push(missing);
        }
        parts.extend(self.update.clone());
        match parts.len() {
            0 => Ok(None),
            1 => Ok(parts.pop()),
            _ => yrs::merge_updates_v1(parts)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Whether a document at `outer` has every item and deletion of `inner`.
fn contains(outer: &yrs::Snapshot, inner: &yrs::Snapshot) -> bool {
    let has_items = inner
        .state_map
        .iter()
        .all(|(client, clock)| outer.state_map.get(client) >= *clock);
    has_items && inner.delete_set.diff(&outer.delete_set).is_empty()
}

/// Per-room locks serializing restores.
static RESTORES: LazyLock<Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

fn restore_lock(room: &RoomName) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = RESTORES.lock().expect("not poisoned");
    // Locks nobody holds or waits for (only the map refers to them) go.
    locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    locks.entry(room.clone()).or_default().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, StateVector, Text, Update, updates::decoder::Decode};

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

    #[test]
    fn a_room_missing_part_of_before_receives_it_with_the_restore() {
        let version = text_doc("version");
        let before = Doc::new();
        before
            .transact_mut()
            .apply_update(Update::decode_v1(&state(&version)).unwrap())
            .unwrap();
        let t = before.get_or_insert_text("t");
        t.insert(&mut before.transact_mut(), 7, " then more");
        let plan = Plan::compute(state(&before), &state(&version)).unwrap();

        // A room that has only the version (the rest went to storage
        // directly) still ends at the version's content.
        let live = Doc::new();
        live.transact_mut()
            .apply_update(Update::decode_v1(&state(&version)).unwrap())
            .unwrap();
        let update = plan.update_for(&live).unwrap().unwrap();
        live.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        let text = live.get_or_insert_text("t");
        assert_eq!(text.get_string(&live.transact()), "version");

        // A room that has all of before gets the restore alone.
        assert_eq!(plan.update_for(&before).unwrap(), plan.update);
    }
}
