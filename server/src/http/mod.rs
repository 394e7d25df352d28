//! HTTP routes: the WebSocket upgrade at `/{room}` and the plain HTTP
//! endpoints beside it, on one port.

pub(crate) mod admission;
pub mod api;
mod demo;
mod room_path;
pub mod websocket;

use std::net::SocketAddr;

use serde_json::json;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::app::App;
use crate::connection;
use crate::ip_connections::IpSlot;

pub use room_path::{BadRoomPath, room_from_path};

/// The peer's socket address, put into each request by the listener.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Every route the server answers.
pub fn routes(
    app: App,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    let api_app = app.clone();
    let with_app = warp::any().map(move || app.clone());
    let peer_addr = warp::ext::optional::<PeerAddr>().map(|a: Option<PeerAddr>| a.map(|a| a.0));

    let upgrade = websocket::websocket()
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(peer_addr)
        .and(warp::ext::optional::<IpSlot>())
        .and(with_app.clone())
        .map(
            |ws: websocket::WsUpgrade,
             path: warp::path::FullPath,
             query: Option<String>,
             headers: HeaderMap,
             addr: Option<SocketAddr>,
             ip_slot: Option<IpSlot>,
             app: App| {
                let request = UpgradeRequest {
                    path: path.as_str(),
                    query: query.as_deref(),
                    headers: &headers,
                    addr,
                    ip_slot,
                };
                upgrade(ws, request, app)
            },
        );
    // Refuses API requests that fail authentication or their rate, and
    // lets the others through to the API routes.
    let api_gate = warp::path("api")
        .and(warp::method())
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(peer_addr)
        .and(with_app.clone())
        .and_then(
            |method: warp::http::Method,
             path: warp::path::FullPath,
             query: Option<String>,
             headers: HeaderMap,
             addr: Option<SocketAddr>,
             app: App| async move {
                let request = admission::ApiRequest {
                    method: method.as_str(),
                    path: path.as_str(),
                    headers: &headers,
                    query: query.as_deref(),
                    addr,
                };
                match admission::admit_api(&app, &request) {
                    Ok(()) => Err(warp::reject::not_found()),
                    Err(refusal) => Ok(*refusal),
                }
            },
        );

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok\n".into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_app.clone())
        .then(|app: App| async move { readiness(&app).await });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: App| {
            warp::reply::with_header(
                app.metrics.render(),
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .into_response()
        });
    let api = api::routes(api_app);
    let demo = demo::routes();
    let not_upgraded = warp::get()
        .and(warp::path::full())
        .and_then(|path: warp::path::FullPath| async move {
            if path.as_str().starts_with("/api/") {
                return Err(warp::reject::not_found());
            }
            Ok(json_error(
                StatusCode::UPGRADE_REQUIRED,
                &format!(
                    "{} is a room: connect to it with a WebSocket (y-websocket's WebsocketProvider)",
                    path.as_str()
                ),
            ))
        });

    upgrade
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(api_gate)
        .unify()
        .or(api)
        .unify()
        .or(demo)
        .unify()
        .or(not_upgraded)
        .unify()
        .recover(handle_rejection)
        .unify()
}

/// The parts of an upgrade request the admission checks read.
struct UpgradeRequest<'a> {
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    addr: Option<SocketAddr>,
    /// The socket's place under `--max-connections-per-ip`, which the
    /// WebSocket keeps for its life.
    ip_slot: Option<IpSlot>,
}

fn upgrade(ws: websocket::WsUpgrade, request: UpgradeRequest<'_>, app: App) -> Response {
    if request.path == "/" {
        // No room in the path: a Hocuspocus provider, naming its
        // documents in its messages.
        return upgrade_multiplexed(ws, request, app);
    }
    let room = match room_from_path(request.path) {
        Ok(room) => room,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("invalid room name: {e}")),
    };
    let admission =
        match admission::admit_upgrade(&app, &room, request.headers, request.query, request.addr) {
            Ok(admission) => admission,
            Err(refusal) => return *refusal,
        };
    let admitted = connection::Admitted {
        room,
        access: admission.access,
        peer_addr: request.addr,
        slot: admission.slot,
        ip_slot: request.ip_slot,
        rate: app.limits.for_connection(),
        limits: app.limits.clone(),
        holder: admission.holder,
        deadline: admission.deadline,
        sessions: app.sessions.clone(),
        acks: crate::saved::SavedQueue::wanted(request.query),
    };
    let config = websocket::socket_config(app.max_message_size);
    let home = app.rooms.home(&admitted.room).cloned();
    ws.on_upgrade(config, home, move |socket| {
        let tasks = app.tasks.clone();
        tasks.track_future(connection::serve(
            socket,
            admitted,
            app.rooms.clone(),
            app.connection.clone(),
            app.shutdown.clone(),
        ))
    })
}

fn upgrade_multiplexed(
    ws: websocket::WsUpgrade,
    request: UpgradeRequest<'_>,
    app: App,
) -> Response {
    let slot = match admission::admit_multiplexed(&app, request.headers, request.addr) {
        Ok(slot) => slot,
        Err(refusal) => return *refusal,
    };
    let admitted = crate::hocuspocus::Multiplexed {
        peer_addr: request.addr,
        slot,
        ip_slot: request.ip_slot,
    };
    let config = websocket::socket_config(app.max_message_size);
    ws.on_upgrade(config, None, move |socket| {
        let tasks = app.tasks.clone();
        tasks.track_future(crate::hocuspocus::serve(socket, admitted, app))
    })
}

/// The raw query string, if the request has one.
fn raw_query() -> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone
{
    warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

async fn readiness(app: &App) -> Response {
    if app.shutdown.is_cancelled() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let journal = app.journal.status();
    if let Some(failure) = journal.failing {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "storage writes failing for {}s ({} attempts); {} bytes of updates pending",
                failure.since.elapsed().as_secs(),
                failure.attempts,
                journal.pending_bytes
            ),
        );
    }
    match app.store.ping().await {
        Ok(()) => warp::reply::json(&json!({
            "status": "ready",
            "pending_bytes": journal.pending_bytes,
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: storage unreachable");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "storage unreachable")
        }
    }
}

/// `{ "error": "…" }` with a status.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({ "error": message })), status)
        .into_response()
}

async fn handle_rejection(rejection: Rejection) -> Result<Response, std::convert::Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else {
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(json_error(status, message))
}
