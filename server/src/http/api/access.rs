//! Ending access: `POST /api/rooms/{room}/disconnect` closes a room's
//! sessions; `/api/revocations` revokes a token subject or one token until
//! a given time, closing their sessions and refusing them at the upgrade
//! and the API meanwhile (see [`crate::revocations`]).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use crdt_store::{Revocation, RevocationKind, RoomName};
use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Reply;

use super::{ApiError, ApiResult};
use crate::app::App;
use crate::close;

/// How long a revocation lasts when the request names no `until`: longer
/// than any token a sane issuer mints.
const DEFAULT_REVOCATION: chrono::Duration = chrono::Duration::days(30);

/// `POST /api/rooms/{room}/disconnect`: closes every session of the room on
/// this node with 4403. Clients whose tokens still grant the room may come
/// back: revoke those first.
pub async fn disconnect(app: &App, room: Result<RoomName, ApiError>) -> ApiResult {
    let room = room?;
    let closed = app.sessions.close_room(&room, close::DISCONNECTED_BY_ADMIN);
    tracing::info!(room = %room, closed, "room's sessions closed through the API");
    Ok(warp::reply::json(&json!({ "room": room, "closed": closed })).into_response())
}

/// The body of `POST /api/revocations`: exactly one of `sub` and `jti`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    sub: Option<String>,
    jti: Option<String>,
    /// RFC 3339; default: 30 days from now.
    until: Option<DateTime<Utc>>,
}

/// `POST /api/revocations`.
pub async fn revoke(app: &App, body: Result<Bytes, ApiError>) -> ApiResult {
    let body = body?;
    let body: RevokeBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be JSON {{\"sub\": …}} or {{\"jti\": …}}, with an optional \"until\" (RFC 3339): {e}"
        ))
    })?;
    let (kind, value) = match (body.sub, body.jti) {
        (Some(sub), None) => (RevocationKind::Sub, sub),
        (None, Some(jti)) => (RevocationKind::Jti, jti),
        _ => {
            return Err(ApiError::BadRequest(
                "name exactly one of \"sub\" and \"jti\"".into(),
            ));
        }
    };
    if value.is_empty() || value.len() > 1024 {
        return Err(ApiError::BadRequest(format!(
            "\"{}\" must be 1 to 1024 bytes",
            kind.as_str()
        )));
    }
    let now = Utc::now();
    let until = body.until.unwrap_or(now + DEFAULT_REVOCATION);
    if until <= now {
        return Err(ApiError::BadRequest("\"until\" is in the past".into()));
    }
    let revocation = Revocation {
        kind,
        value,
        until,
        created_at: now,
    };
    let closed = app
        .revocations
        .revoke(revocation.clone(), &app.sessions)
        .await?;
    if let Some(cluster) = app.rooms.cluster() {
        cluster.announce_revocation().await;
    }
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({
            "kind": revocation.kind,
            "value": revocation.value,
            "until": revocation.until,
            "closed": closed,
        })),
        StatusCode::CREATED,
    )
    .into_response())
}

/// `GET /api/revocations`: those in force, newest first.
pub fn list(app: &App) -> ApiResult {
    Ok(warp::reply::json(&app.revocations.list()).into_response())
}
