//! Room endpoints: list, inspect, read, write, snapshot, delete.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use crdt_store::{RoomName, SnapshotInfo};
use serde_json::json;
use warp::reply::Reply;
use yrs::StateVector;
use yrs::updates::decoder::Decode;

use super::{ApiError, ApiResult, Caller, Query};
use crate::app::App;
use crate::cluster::DeleteBlocked;
use crate::protocol::DocUpdate;
use crate::room::{RoomReply, RoomRequest, RoomUnavailable};

type Room = Result<RoomName, ApiError>;

/// `GET /api/rooms`: rooms in memory (with connections) and in storage,
/// those the caller's token covers.
pub async fn list(app: &App, caller: &Caller) -> ApiResult {
    let mut loaded = app.rooms.loaded();
    loaded.retain(|(room, _)| caller.may(room));
    loaded.sort();
    let mut stored = app.store.rooms().await?;
    stored.retain(|summary| caller.may(&summary.room));
    let mut names: Vec<&RoomName> = loaded.iter().map(|(name, _)| name).collect();
    names.extend(stored.iter().map(|s| &s.room));
    names.sort();
    names.dedup();
    let rooms: Vec<_> = names
        .into_iter()
        .map(|name| {
            let connections = loaded
                .iter()
                .find(|(loaded, _)| loaded == name)
                .map(|(_, count)| *count);
            let stored = stored.iter().find(|s| &s.room == name);
            json!({
                "room": name,
                "loaded": connections.is_some(),
                "connections": connections.unwrap_or(0),
                "stored": stored.map(|s| json!({
                    "updated_at": s.updated_at,
                    "snapshots": s.snapshots,
                    "size": s.size,
                })),
            })
        })
        .collect();
    Ok(warp::reply::json(&rooms).into_response())
}

/// The room must be in memory or in storage; the API never conjures one
/// by reading it.
pub(super) async fn require_room(app: &App, room: &RoomName) -> Result<(), ApiError> {
    if app.rooms.is_loaded(room) || app.store.room_summary(room).await?.is_some() {
        Ok(())
    } else {
        Err(ApiError::RoomNotFound(room.clone()))
    }
}

/// `GET /api/rooms/{room}`.
pub async fn info(app: &App, room: Room) -> ApiResult {
    let room = room?;
    require_room(app, &room).await?;
    let RoomReply::Info(info) = app.rooms.request(&room, || RoomRequest::Info).await? else {
        return Err(ApiError::Internal("unexpected reply".into()));
    };
    let stored = app.store.room_summary(&room).await?;
    let last_snapshot = app.store.snapshots(&room).await?.into_iter().next();
    let last_change = info
        .last_change
        .map(DateTime::<Utc>::from)
        .or(stored.as_ref().map(|s| s.updated_at));
    Ok(warp::reply::json(&json!({
        "room": room,
        "connections": info.connections,
        "document_bytes": info.document_bytes,
        "state_vector": BASE64.encode(&info.state_vector),
        "unsaved_updates": info.unsaved_updates,
        "held": {"updates": info.held_updates, "bytes": info.held_bytes},
        "last_change": last_change,
        "last_snapshot": last_snapshot.as_ref().map(snapshot_json),
    }))
    .into_response())
}

/// `GET /api/rooms/{room}/state[?sv=BASE64]`: one binary Yjs v1 update.
pub async fn state(app: &App, room: Room, query: Query) -> ApiResult {
    let room = room?;
    let sv = query
        .sv
        .map(|sv| {
            let bytes = BASE64
                .decode(sv.trim())
                .map_err(|_| ApiError::BadRequest("sv is not base64".into()))?;
            crate::decode_guard::check_state_vector_v1(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("sv is not a state vector: {e}")))?;
            StateVector::decode_v1(&bytes)
                .map_err(|_| ApiError::BadRequest("sv is not a state vector".into()))
        })
        .transpose()?;
    require_room(app, &room).await?;
    let RoomReply::State(update) = app
        .rooms
        .request(&room, || RoomRequest::State(sv.clone()))
        .await?
    else {
        return Err(ApiError::Internal("unexpected reply".into()));
    };
    Ok(
        warp::reply::with_header(update, "content-type", "application/octet-stream")
            .into_response(),
    )
}

/// `POST /api/rooms/{room}/update`: applies a binary Yjs v1 update; every
/// connected client receives it at once.
pub async fn update(app: &App, room: Room, body: Bytes) -> ApiResult {
    let room = room?;
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "the body must be a binary Yjs v1 update".into(),
        ));
    }
    let summary = crate::decode_guard::check_update_v1(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a Yjs v1 update: {e}")))?;
    if summary.subdocs > 0 && !app.connection.subdocuments.allows() {
        return Err(ApiError::BadRequest(format!(
            "the update creates {} subdocument(s), which this server refuses (--subdocuments)",
            summary.subdocs
        )));
    }
    DocUpdate::decode(body.clone())
        .map_err(|e| ApiError::BadRequest(format!("the body is not a Yjs v1 update: {e}")))?;
    app.journal
        .check_capacity(body.len())
        .map_err(|_| ApiError::Backlogged)?;
    let reply = app
        .rooms
        .request(&room, || {
            // Decoding again per attempt keeps the request retryable
            // (an Update is consumed by applying it).
            RoomRequest::Apply(DocUpdate::decode(body.clone()).expect("decoded above"))
        })
        .await?;
    let accepted = match reply {
        RoomReply::Applied(accepted) => accepted,
        RoomReply::Failed(reason) => {
            return Err(ApiError::BadRequest(format!(
                "the update could not be applied: {reason}"
            )));
        }
        _ => return Err(ApiError::Internal("unexpected reply".into())),
    };
    // `complete: false`: part of it builds on something the room lacks
    // (an earlier update that never arrived); that part is stored and
    // joins the document when what it needs does.
    Ok(warp::reply::json(&json!({
        "applied": true,
        "changed": accepted.new,
        "complete": !accepted.waiting,
    }))
    .into_response())
}

/// `GET /api/rooms/{room}/json`.
pub async fn json(app: &App, room: Room) -> ApiResult {
    let room = room?;
    require_room(app, &room).await?;
    let RoomReply::Json(value) = app.rooms.request(&room, || RoomRequest::Json).await? else {
        return Err(ApiError::Internal("unexpected reply".into()));
    };
    Ok(warp::reply::json(&value).into_response())
}

/// `POST /api/rooms/{room}/snapshot`: writes a compacted snapshot now.
pub async fn snapshot(app: &App, room: Room) -> ApiResult {
    let room = room?;
    require_room(app, &room).await?;
    let RoomReply::Snapshot(result) = app
        .rooms
        .request(&room, || RoomRequest::Snapshot {
            restored_from: None,
        })
        .await?
    else {
        return Err(ApiError::Internal("unexpected reply".into()));
    };
    let info = result.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(warp::reply::with_status(
        warp::reply::json(&snapshot_json(&info)),
        warp::http::StatusCode::CREATED,
    )
    .into_response())
}

/// `GET /api/rooms/{room}/snapshots`: the room's versions, newest first.
pub async fn snapshots(app: &App, room: Room) -> ApiResult {
    let room = room?;
    require_room(app, &room).await?;
    let versions: Vec<_> = app
        .store
        .snapshots(&room)
        .await?
        .iter()
        .map(snapshot_json)
        .collect();
    Ok(warp::reply::json(&versions).into_response())
}

/// `DELETE /api/rooms/{room}?confirm={room}`: closes the room's
/// connections and deletes everything stored for it.
pub async fn delete(app: &App, room: Room, query: Query) -> ApiResult {
    let room = room?;
    if query.confirm.as_deref() != Some(room.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "deleting a room needs ?confirm= with the room's name ({room})"
        )));
    }
    loop {
        match app
            .rooms
            .request_if_loaded(&room, RoomRequest::Delete)
            .await
        {
            Some(Ok(_)) => break,
            Some(Err(e)) => return Err(e.into()),
            None => match app.rooms.begin_delete(&room) {
                Ok(()) => break,
                Err(RoomUnavailable::Unloading) => continue, // loaded meanwhile
                Err(e) => return Err(e.into()),
            },
        }
    }
    // Updates the room accepted before it stopped must not land after the
    // deletion and resurrect part of it.
    app.journal.flushed().await;
    // Nor may another node's copy (cluster mode): every node lets go first.
    let cluster = app.rooms.cluster();
    if let Some(cluster) = cluster
        && let Err(e) = cluster.delete_everywhere(&room).await
    {
        app.rooms.end_delete(&room);
        return Err(match e {
            DeleteBlocked::Redis(e) => {
                tracing::error!(room = %room, error = %e, "cannot tell the other nodes of a deletion; nothing deleted");
                ApiError::Internal("the cluster could not be told".into())
            }
            DeleteBlocked::StillHeld { .. } => {
                cluster.deleted(&room).await;
                ApiError::HeldElsewhere
            }
        });
    }
    let deleted = app.store.delete_room(&room).await;
    app.rooms.end_delete(&room);
    if let Some(cluster) = cluster {
        cluster.deleted(&room).await;
    }
    let deleted = deleted?;
    if !deleted {
        return Err(ApiError::RoomNotFound(room));
    }
    tracing::info!(room = %room, "room deleted through the API");
    if let Some(hooks) = app.rooms.webhooks() {
        hooks.room_deleted(&room);
    }
    Ok(warp::reply::json(&json!({ "deleted": true })).into_response())
}

pub fn snapshot_json(info: &SnapshotInfo) -> serde_json::Value {
    json!({
        "id": info.id,
        "created_at": info.created_at,
        "size": info.size,
        "updates": info.updates,
        "restored_from": info.restored_from,
    })
}

/// `POST /api/rooms/{room}/stateless`: the body (UTF-8 text, at most
/// 64 KiB) goes to every Hocuspocus provider in the room, on every node,
/// as a stateless message, as a Hocuspocus server's `broadcastStateless`
/// does. Answers how many on this node it was queued for.
pub async fn stateless(app: &App, room: Room, body: Result<Bytes, ApiError>) -> ApiResult {
    let room = room?;
    let payload = String::from_utf8(body?.to_vec())
        .map_err(|_| ApiError::BadRequest("the body must be UTF-8 text".into()))?;
    // Never loads a room: with nobody in it, there is nobody to tell. A
    // room held here reaches the other nodes through its bus; one that is
    // not, through the room's stream directly.
    let delivered = if app.rooms.is_loaded(&room) {
        match app
            .rooms
            .request(&room, || RoomRequest::Stateless(payload.clone()))
            .await?
        {
            RoomReply::Delivered(n) => n,
            _ => return Err(ApiError::Internal("unexpected reply".into())),
        }
    } else {
        if let Some(cluster) = app.rooms.cluster()
            && let Err(e) = cluster.publish_stateless(&room, &payload).await
        {
            tracing::error!(room = %room, error = %e, "cannot pass a stateless message to the other nodes");
            return Err(ApiError::Internal("the cluster could not be told".into()));
        }
        0
    };
    Ok(
        warp::reply::json(&json!({ "room": room.as_str(), "delivered": delivered }))
            .into_response(),
    )
}
