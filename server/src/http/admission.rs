//! Who gets in, checked before anything is opened: a refused WebSocket
//! request gets an HTTP status and never an upgraded socket.
//!
//! Order for an upgrade: Origin (403), token (401/403), the client's
//! connection rate (429), the server's connection cap (503), the room's
//! connection cap (503). For the API: the client's request rate (429), then
//! a token with the route's role and the room (401/403).

use std::net::SocketAddr;
use std::time::SystemTime;

use crdt_store::RoomName;
use tokio::sync::OwnedSemaphorePermit;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::{api, json_error, room_from_path};
use crate::app::App;
use crate::auth::{self, AuthError, Claims};
use crate::grant::{Grant, grant_in_room};
use crate::limits::RetryAfter;
use crate::metrics;
use crate::room::Access;
use crate::sessions::Holder;

/// The response a refused request gets (boxed: it is large and the
/// admitted path is the common one).
pub type Refusal = Box<Response>;

/// What an admitted upgrade may do, and its connection slot.
pub struct Admission {
    pub access: Access,
    pub slot: OwnedSemaphorePermit,
    /// Who the token is for (with authentication on).
    pub holder: Holder,
    /// When the token stops granting access (`exp` plus the leeway).
    pub deadline: Option<SystemTime>,
}

/// Checks a WebSocket upgrade into `room`.
///
/// # Errors
/// The HTTP response to send instead of upgrading.
pub fn admit_upgrade(
    app: &App,
    room: &RoomName,
    headers: &HeaderMap,
    query: Option<&str>,
    addr: Option<SocketAddr>,
) -> Result<Admission, Refusal> {
    check_origin(app, headers)?;
    let Grant {
        access,
        holder,
        deadline,
    } = match &app.auth {
        None => Grant::open(),
        Some(_) => {
            let claims = authenticate(app, headers, query)?;
            grant_in_room(app, &claims, room).map_err(|e| refuse_for(e, &claims, Some(room)))?
        }
    };
    if let Some(addr) = addr {
        app.limits.refusals.check(addr.ip(), room).map_err(|wait| {
            too_many(
                "this room refused your last updates (see the close reason); wait before reconnecting",
                RetryAfter(wait),
            )
        })?;
        app.limits
            .admit_connection(addr.ip())
            .map_err(|retry| too_many("too many new connections from this address", retry))?;
    }
    let slot = app.limits.connection_slot().ok_or_else(|| {
        metrics::rate_limited("max_connections");
        unavailable("server is at its connection limit (--max-connections)")
    })?;
    if app.rooms.connections(room) >= app.room_max_connections {
        metrics::rate_limited("max_connections_per_room");
        return Err(unavailable(
            "room is at its connection limit (--max-connections-per-room)",
        ));
    }
    Ok(Admission {
        access,
        slot,
        holder,
        deadline,
    })
}

/// Checks a multiplexed (Hocuspocus) upgrade at `/`: Origin, the client's
/// connection rate and the server's connection cap. Each document's token
/// and room are checked as its provider asks for it.
///
/// # Errors
/// The HTTP response to send instead of upgrading.
pub fn admit_multiplexed(
    app: &App,
    headers: &HeaderMap,
    addr: Option<SocketAddr>,
) -> Result<OwnedSemaphorePermit, Refusal> {
    check_origin(app, headers)?;
    if let Some(addr) = addr {
        app.limits
            .admit_connection(addr.ip())
            .map_err(|retry| too_many("too many new connections from this address", retry))?;
    }
    app.limits.connection_slot().ok_or_else(|| {
        metrics::rate_limited("max_connections");
        unavailable("server is at its connection limit (--max-connections)")
    })
}

/// An `/api` request, as the gate sees it.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    /// Percent-encoded, as received.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub addr: Option<SocketAddr>,
}

/// Checks an `/api` request against its route in [`api::ROUTES`]: within
/// the client's request rate, and with authentication on, a token whose
/// role is at least the route's and whose rooms cover the room in the path.
/// A request for no route in the table is refused (404) when
/// authentication is on: a route cannot be served without a role.
///
/// # Errors
/// The HTTP response to send instead.
pub fn admit_api(app: &App, request: &ApiRequest<'_>) -> Result<(), Refusal> {
    if let Some(addr) = request.addr {
        app.limits
            .admit_api_request(addr.ip())
            .map_err(|retry| too_many("too many API requests from this address", retry))?;
    }
    if app.auth.is_none() {
        return Ok(());
    }
    let Some((route, room)) = api::ApiRoute::find(request.method, request.path) else {
        return Err(Box::new(json_error(StatusCode::NOT_FOUND, "not found")));
    };
    let Some(needed) = route.role else {
        return Ok(());
    };
    let room = room.map(room_from_path).transpose().map_err(|e| {
        Box::new(json_error(
            StatusCode::BAD_REQUEST,
            &format!("invalid room name: {e}"),
        ))
    })?;
    let claims = authenticate(app, request.headers, request.query)?;
    let refused = |error: AuthError| refuse_for(error, &claims, room.as_ref());
    if claims.role < needed {
        return Err(refused(AuthError::Role(needed)));
    }
    if let Some(room) = &room
        && !claims.allows_room(room.as_str())
    {
        return Err(refused(AuthError::WrongRoom));
    }
    if route.every_room && !claims.rooms.iter().any(|pattern| pattern == "**") {
        return Err(refused(AuthError::EveryRoom));
    }
    Ok(())
}

/// The request's verified, unrevoked claims.
fn authenticate(app: &App, headers: &HeaderMap, query: Option<&str>) -> Result<Claims, Refusal> {
    let Some(verifier) = &app.auth else {
        return Err(refuse(AuthError::Missing));
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = auth::token_from(authorization, query).ok_or_else(|| refuse(AuthError::Missing))?;
    let claims = verifier.verify(&token).map_err(refuse)?;
    if let Some(kind) = app.revocations.revoked(&claims) {
        return Err(refuse_for(AuthError::Revoked(kind.as_str()), &claims, None));
    }
    Ok(claims)
}

fn check_origin(app: &App, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(allowed) = &app.allowed_origins else {
        return Ok(());
    };
    // Non-browser clients send no Origin; the check is for browsers.
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        metrics::auth_refused("origin");
        Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            &format!("origin {origin} is not allowed (--allowed-origins)"),
        )))
    }
}

/// A refusal of a request whose token verified: logged with who it was.
fn refuse_for(error: AuthError, claims: &Claims, room: Option<&RoomName>) -> Refusal {
    tracing::info!(
        reason = error.metric_label(),
        sub = claims.sub.as_deref().unwrap_or("-"),
        role = ?claims.role,
        room = room.map_or("-", RoomName::as_str),
        "refused: {error}"
    );
    refuse(error)
}

fn refuse(error: AuthError) -> Refusal {
    metrics::auth_refused(error.metric_label());
    tracing::debug!(error = %error, "request refused");
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = json_error(status, &error.to_string());
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    Box::new(response)
}

fn too_many(message: &str, retry: RetryAfter) -> Refusal {
    metrics::rate_limited("http");
    let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, message);
    let seconds = retry.0.as_secs() + u64::from(retry.0.subsec_nanos() > 0);
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Box::new(response)
}

fn unavailable(message: &str) -> Refusal {
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Box::new(response)
}
