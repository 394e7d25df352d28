//! The HTTP API under `/api`: lets an operator's own backends read and
//! write documents. Described in `server/openapi.yaml` (also served at
//! `/api/openapi.yaml`); a test checks every route below against it.

mod access;
mod events;
pub mod restore;
mod rooms;

use std::convert::Infallible;
use std::sync::Arc;

use crdt_store::{RoomName, StoreError};
use warp::http::{HeaderMap, StatusCode};
use warp::path::FullPath;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::{json_error, room_from_path};
use crate::app::App;
use crate::auth::{self, Claims, Role};
use crate::body_budget::BodyError;
use crate::room::RoomUnavailable;

/// The OpenAPI description, embedded so the binary can serve it.
pub const OPENAPI_YAML: &str = include_str!("../../../openapi.yaml");

/// One route of the API, and who may call it.
#[derive(Debug, Clone, Copy)]
pub struct ApiRoute {
    /// Lower-case, as in `openapi.yaml`.
    pub method: &'static str,
    /// The OpenAPI path; `{room}` is one percent-encoded segment.
    pub path: &'static str,
    /// The least role whose token may call it (with authentication on);
    /// `None`: anyone.
    pub role: Option<Role>,
    /// It acts on every room (revocations): the token's rooms must include
    /// `**`.
    pub every_room: bool,
}

const fn route(method: &'static str, path: &'static str, role: Option<Role>) -> ApiRoute {
    ApiRoute {
        method,
        path,
        role,
        every_room: false,
    }
}

const fn every_room(method: &'static str, path: &'static str, role: Role) -> ApiRoute {
    ApiRoute {
        method,
        path,
        role: Some(role),
        every_room: true,
    }
}

/// Every route the API serves. The gate in front of the API authorizes
/// through this table and refuses any `/api` request that matches no entry
/// (so a route cannot be added without a role), the role-matrix test runs
/// every entry with every role, and the spec test compares it with
/// `openapi.yaml`.
pub const ROUTES: &[ApiRoute] = &[
    route("get", "/api/rooms", Some(Role::Read)),
    route("get", "/api/rooms/{room}", Some(Role::Read)),
    route("delete", "/api/rooms/{room}", Some(Role::Admin)),
    route("get", "/api/rooms/{room}/state", Some(Role::Read)),
    route("post", "/api/rooms/{room}/update", Some(Role::Write)),
    route("get", "/api/rooms/{room}/json", Some(Role::Read)),
    route("get", "/api/rooms/{room}/events", Some(Role::Read)),
    route("post", "/api/rooms/{room}/snapshot", Some(Role::Admin)),
    route("get", "/api/rooms/{room}/snapshots", Some(Role::Read)),
    route("post", "/api/rooms/{room}/restore", Some(Role::Admin)),
    route("post", "/api/rooms/{room}/disconnect", Some(Role::Admin)),
    route("post", "/api/rooms/{room}/stateless", Some(Role::Write)),
    every_room("get", "/api/revocations", Role::Admin),
    every_room("post", "/api/revocations", Role::Admin),
    route("get", "/api/openapi.yaml", None),
];

impl ApiRoute {
    /// The route `method` and `path` (a request's, percent-encoded) are
    /// for, and the room segment it names, if any.
    pub fn find<'a>(method: &str, path: &'a str) -> Option<(&'static ApiRoute, Option<&'a str>)> {
        ROUTES.iter().find_map(|route| {
            if !route.method.eq_ignore_ascii_case(method) {
                return None;
            }
            route.matches(path).map(|room| (route, room))
        })
    }

    /// `Some(room)` when `path` is this route's (with the room segment if
    /// it has one).
    fn matches<'a>(&self, path: &'a str) -> Option<Option<&'a str>> {
        let mut room = None;
        let mut theirs = path.split('/');
        for ours in self.path.split('/') {
            let segment = theirs.next()?;
            if ours == "{room}" {
                if segment.is_empty() {
                    return None;
                }
                room = Some(segment);
            } else if ours != segment {
                return None;
            }
        }
        theirs.next().is_none().then_some(room)
    }
}

/// Why an API request failed; each becomes a JSON error with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("room {0} not found")]
    RoomNotFound(RoomName),
    /// The caller's token does not cover a room the request touches
    /// besides the one in the path (the gate checked that one).
    #[error("token does not grant access to room {0}")]
    Forbidden(RoomName),
    #[error("{0}")]
    NotFound(String),
    #[error("room is unavailable: {0}")]
    Unavailable(#[from] RoomUnavailable),
    #[error("storage write backlog is full; retry later")]
    Backlogged,
    /// A delete found another node still writing the room (its database
    /// may be out of reach): deleting under it would let its writes bring
    /// part of the room back.
    #[error(
        "another node holding the room has not finished writing it; nothing was deleted; retry later"
    )]
    HeldElsewhere,
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
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) | ApiError::Backlogged | ApiError::HeldElsewhere => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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

/// Who is calling. The gate in front of the API has already checked the
/// token and the room in the path; a request that touches other rooms (a
/// restore `into` another room, the room listing) checks those here.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off: every room.
    Anyone,
    /// The rooms the token names.
    Token(Arc<Claims>),
}

impl Caller {
    pub fn may(&self, room: &RoomName) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token(claims) => claims.allows_room(room.as_str()),
        }
    }
}

/// The request's [`Caller`]. A token that does not verify (the gate let
/// nothing like it through) covers no room: fail closed.
fn caller(app: App) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(super::raw_query())
        .map(
            move |authorization: Option<String>, query: Option<String>| {
                let Some(verifier) = &app.auth else {
                    return Caller::Anyone;
                };
                let claims = auth::token_from(authorization.as_deref(), query.as_deref())
                    .and_then(|token| verifier.verify(&token).ok())
                    .unwrap_or_else(Claims::none);
                Caller::Token(Arc::new(claims))
            },
        )
}

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
    let with_caller = caller(app.clone());
    let with_app = warp::any().map(move || app.clone());

    let list = warp::path!("api" / "rooms")
        .and(warp::get())
        .and(with_caller.clone())
        .and(with_app.clone())
        .then(|caller: Caller, app: App| async move { finish(rooms::list(&app, &caller).await) });
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
        .and(with_caller)
        .and(with_app.clone())
        .then(|room, body, caller: Caller, app: App| async move {
            finish(restore::restore(&app, &caller, room, body).await)
        });
    let disconnect = room_route("disconnect")
        .and(warp::post())
        .and(with_app.clone())
        .then(|room, app: App| async move { finish(access::disconnect(&app, room).await) });
    let stateless = room_route("stateless")
        .and(warp::post())
        .and(restore::small_body())
        .and(with_app.clone())
        .then(
            |room, body, app: App| async move { finish(rooms::stateless(&app, room, body).await) },
        );
    let revocations = warp::path!("api" / "revocations")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: App| finish(access::list(&app)));
    let revoke = warp::path!("api" / "revocations")
        .and(warp::post())
        .and(restore::small_body())
        .and(with_app)
        .then(|body, app: App| async move { finish(access::revoke(&app, body).await) });

    list.or(openapi)
        .unify()
        .or(disconnect)
        .unify()
        .or(stateless)
        .unify()
        .or(revocations)
        .unify()
        .or(revoke)
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
