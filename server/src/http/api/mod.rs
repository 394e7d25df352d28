//! The HTTP API under `/api`: lets an operator's own backends read and
//! write documents. Described in `server/openapi.yaml` (also served at
//! `/api/openapi.yaml`); a test checks every route below against it.

mod events;
pub mod restore;
mod rooms;

use std::convert::Infallible;

use crdt_store::{RoomName, StoreError};
use warp::http::{HeaderMap, StatusCode};
use warp::path::FullPath;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::{json_error, room_from_path};
use crate::app::App;
use crate::body_budget::BodyError;
use crate::room::RoomUnavailable;

/// The OpenAPI description, embedded so the binary can serve it.
pub const OPENAPI_YAML: &str = include_str!("../../../openapi.yaml");

/// Every route the API serves, as `(method, OpenAPI path)`: kept beside the
/// routes so the spec test can compare the two.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/rooms"),
    ("get", "/api/rooms/{room}"),
    ("delete", "/api/rooms/{room}"),
    ("get", "/api/rooms/{room}/state"),
    ("post", "/api/rooms/{room}/update"),
    ("get", "/api/rooms/{room}/json"),
    ("get", "/api/rooms/{room}/events"),
    ("post", "/api/rooms/{room}/snapshot"),
    ("get", "/api/rooms/{room}/snapshots"),
    ("post", "/api/rooms/{room}/restore"),
    ("get", "/api/openapi.yaml"),
];

/// Why an API request failed; each becomes a JSON error with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("room {0} not found")]
    RoomNotFound(RoomName),
    #[error("{0}")]
    NotFound(String),
    #[error("room is unavailable: {0}")]
    Unavailable(#[from] RoomUnavailable),
    #[error("storage write backlog is full; retry later")]
    Backlogged,
    #[error("storage error")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A request body refused before it was read (411, 413, 503) or that
    /// could not be read (400).
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A restore that could not be computed or applied: nothing changed.
    /// The reason is about the documents, not the system, so the caller
    /// gets it.
    #[error("the restore failed: {0}")]
    RestoreFailed(String),
}

impl ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::RoomNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) | ApiError::Backlogged => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Body(e) => e.status(),
            ApiError::Store(_) | ApiError::Internal(_) | ApiError::RestoreFailed(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        match &self {
            // Details stay in the log, never in the response.
            ApiError::Store(e) => {
                tracing::error!(error = %e, cause = ?std::error::Error::source(e), "API request failed in storage");
                json_error(status, "internal error")
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "API request failed");
                json_error(status, "internal error")
            }
            _ => {
                if let ApiError::RestoreFailed(reason) = &self {
                    tracing::error!(%reason, "restore failed");
                }
                let mut response = json_error(status, &self.to_string());
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    response
                        .headers_mut()
                        .insert("retry-after", warp::http::HeaderValue::from_static("1"));
                }
                response
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn finish(result: ApiResult) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// Matches `/api/rooms/{room}` (action `""`) or `/api/rooms/{room}/{action}`
/// and extracts the percent-decoded room (a bad name is a 400, not a 404).
fn room_route(
    action: &'static str,
) -> impl Filter<Extract = (Result<RoomName, ApiError>,), Error = Rejection> + Clone {
    warp::path::full().and_then(move |full: FullPath| async move {
        let rest = full
            .as_str()
            .strip_prefix("/api/rooms/")
            .ok_or_else(warp::reject::not_found)?;
        let (room, found) = rest.split_once('/').unwrap_or((rest, ""));
        if found != action || room.is_empty() {
            return Err(warp::reject::not_found());
        }
        Ok::<_, Rejection>(
            room_from_path(room)
                .map_err(|e| ApiError::BadRequest(format!("invalid room name: {e}"))),
        )
    })
}

/// Every `/api` route.
pub fn routes(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with_app = warp::any().map(move || app.clone());

    let list = warp::path!("api" / "rooms")
        .and(warp::get())
        .and(with_app.clone())
        .then(|app: App| async move { finish(rooms::list(&app).await) });
    let openapi = warp::path!("api" / "openapi.yaml")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(OPENAPI_YAML, "content-type", "application/yaml")
                .into_response()
        });
    let info = room_route("")
        .and(warp::get())
        .and(with_app.clone())
        .then(|room, app: App| async move { finish(rooms::info(&app, room).await) });
    let delete = room_route("")
        .and(warp::delete())
        .and(optional_query())
        .and(with_app.clone())
        .then(|room, query: Query, app: App| async move {
            finish(rooms::delete(&app, room, query).await)
        });
    let state = room_route("state")
        .and(warp::get())
        .and(optional_query())
        .and(with_app.clone())
        .then(|room, query: Query, app: App| async move {
            finish(rooms::state(&app, room, query).await)
        });
    // The body is admitted by the handler, not by a filter: a filter's
    // rejection falls through to the routes after it, and the client got
    // their 405 instead of 413 (issue 27, item 6).
    let update = room_route("update")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_app.clone())
        .then(|room, headers: HeaderMap, body, app: App| async move {
            finish(update_with_body(&app, room, &headers, body).await)
        });
    let json = room_route("json")
        .and(warp::get())
        .and(with_app.clone())
        .then(|room, app: App| async move { finish(rooms::json(&app, room).await) });
    let events = room_route("events")
        .and(warp::get())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_app.clone())
        .then(|room, last: Option<String>, app: App| async move {
            finish(events::stream(&app, room, last).await)
        });
    let snapshot = room_route("snapshot")
        .and(warp::post())
        .and(with_app.clone())
        .then(|room, app: App| async move { finish(rooms::snapshot(&app, room).await) });
    let snapshots = room_route("snapshots")
        .and(warp::get())
        .and(with_app.clone())
        .then(|room, app: App| async move { finish(rooms::snapshots(&app, room).await) });
    let restore = room_route("restore")
        .and(warp::post())
        .and(restore::small_body())
        .and(with_app)
        .then(
            |room, body, app: App| async move { finish(restore::restore(&app, room, body).await) },
        );

    list.or(openapi)
        .unify()
        .or(info)
        .unify()
        .or(delete)
        .unify()
        .or(state)
        .unify()
        .or(update)
        .unify()
        .or(json)
        .unify()
        .or(events)
        .unify()
        .or(snapshot)
        .unify()
        .or(snapshots)
        .unify()
        .or(restore)
        .unify()
}

/// `POST …/update`: reserves the body's bytes in the server's budget
/// (`--max-body-bytes-in-flight`), reads it, applies it, and only then
/// gives the bytes back.
async fn update_with_body<S, B>(
    app: &App,
    room: Result<RoomName, ApiError>,
    headers: &HeaderMap,
    body: S,
) -> ApiResult
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    let room = room?;
    let permit = app.limits.bodies.admit(headers).await?;
    let body = permit.read(body).await?;
    let result = rooms::update(app, Ok(room), body).await;
    drop(permit);
    result
}

/// Query parameters the API understands.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Query {
    /// Base64 state vector: only what it lacks (`/state`).
    pub sv: Option<String>,
    /// Must repeat the room name (`DELETE`).
    pub confirm: Option<String>,
}

fn optional_query() -> impl Filter<Extract = (Query,), Error = Infallible> + Clone {
    warp::query::<Query>()
        .or(warp::any().map(Query::default))
        .unify()
}
