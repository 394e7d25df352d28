//! HTTP routes: the WebSocket upgrade at `/{room}` and the plain HTTP
//! endpoints beside it, on one port.

mod room_path;

use std::net::SocketAddr;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::app::App;
use crate::connection;
use crate::room::Access;

pub use room_path::{BadRoomPath, room_from_path};

/// The peer's socket address, put into each request by the listener.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Every route the server answers.
pub fn routes(
    app: App,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    let with_app = warp::any().map(move || app.clone());
    let peer_addr = warp::ext::optional::<PeerAddr>().map(|a: Option<PeerAddr>| a.map(|a| a.0));

    let upgrade = warp::ws()
        .and(warp::get())
        .and(warp::path::full())
        .and(peer_addr)
        .and(with_app.clone())
        .map(
            |ws: warp::ws::Ws, path: warp::path::FullPath, addr: Option<SocketAddr>, app: App| {
                upgrade(ws, path.as_str(), addr, app)
            },
        );

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok\n".into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_app.clone())
        .then(|app: App| async move { readiness(&app).await });
    let index = warp::path::end().and(warp::get()).map(index_page);
    let not_upgraded = warp::get().and(warp::path::full()).map(|path: warp::path::FullPath| {
        json_error(
            StatusCode::UPGRADE_REQUIRED,
            &format!(
                "{} is a room: connect to it with a WebSocket (y-websocket's WebsocketProvider)",
                path.as_str()
            ),
        )
    });

    upgrade
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(index)
        .unify()
        .or(not_upgraded)
        .unify()
        .recover(handle_rejection)
        .unify()
}

fn upgrade(ws: warp::ws::Ws, path: &str, addr: Option<SocketAddr>, app: App) -> Response {
    let room = match room_from_path(path) {
        Ok(room) => room,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("invalid room name: {e}")),
    };
    let limit = app.max_message_size;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let tasks = app.tasks.clone();
            tasks.track_future(connection::serve(
                socket,
                room,
                Access::ReadWrite,
                addr,
                app.rooms.clone(),
                app.connection.clone(),
                app.shutdown.clone(),
            ))
        })
        .into_response()
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

fn index_page() -> Response {
    warp::reply::with_header(
        concat!(
            "crdt-hub ",
            env!("CARGO_PKG_VERSION"),
            " is running.\n\n",
            "Connect a Yjs document with y-websocket:\n",
            "  new WebsocketProvider('ws://HOST:PORT', 'my-room', doc)\n",
        ),
        "content-type",
        "text/plain; charset=utf-8",
    )
    .into_response()
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
