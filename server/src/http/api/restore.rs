//! `POST /api/rooms/{room}/restore`: the HTTP face of [`crate::restore`],
//! through the live room. Checks the token against the room it writes
//! (`into`) besides the one in the path.

use bytes::Bytes;
use crdt_store::{RoomName, SnapshotId};
use serde::Deserialize;
use serde_json::json;
use warp::reply::Reply;

use super::{ApiError, ApiResult, Caller};
use crate::app::App;
use crate::restore::{RestoreError, Through};

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

/// Largest restore request body (it is a small JSON object).
const MAX_BODY: usize = 64 << 10;

/// The request body, read up to `MAX_BODY` (with or without a
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
    let through = Through::Room {
        rooms: &app.rooms,
        journal: &app.journal,
    };
    let restored =
        crate::restore::restore(&app.store, through, &source, body.version, &room).await?;
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

impl From<RestoreError> for ApiError {
    fn from(e: RestoreError) -> Self {
        match e {
            RestoreError::RoomNotFound(room) => ApiError::RoomNotFound(room),
            RestoreError::VersionNotFound { room, version } => {
                ApiError::NotFound(format!("room {room} has no version {version}"))
            }
            RestoreError::Backlogged => ApiError::Backlogged,
            RestoreError::Unavailable(e) => ApiError::Unavailable(e),
            RestoreError::Store(e) => ApiError::Store(e),
            // The reason is about the documents: the caller gets it.
            e if e.is_about_documents() => ApiError::RestoreFailed(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}
