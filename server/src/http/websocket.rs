//! The WebSocket handshake, done here rather than by `warp::ws` so that the
//! socket is a plain `tokio_tungstenite::WebSocketStream` we configure
//! fully: a small read buffer (tungstenite's default 128 KiB per connection
//! would dwarf an idle Yjs client) and access to the raw stream, so a
//! refused client can be drained and still read its close code.
//!
//! The listener takes hyper's upgrade handle out of each upgrade request
//! and leaves it in the request as a [`PendingUpgrade`]; the filter here
//! checks the handshake headers, answers 101 and hands the upgraded stream
//! to a callback.

use std::future::Future;
use std::sync::{Arc, Mutex};

use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

pub use crate::connection::Socket;
use crate::frames::CountedIo;
use crate::shared_socket::SocketIo;

/// hyper's upgrade handle, made cloneable so a warp filter can extract it.
#[derive(Clone)]
pub struct PendingUpgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl PendingUpgrade {
    /// Takes the upgrade handle out of an upgrade request (and leaves other
    /// requests alone).
    pub fn extract<B>(request: &mut hyper::Request<B>) -> Option<Self> {
        if !header_has_token(request.headers(), header::UPGRADE, "websocket") {
            return None;
        }
        let on_upgrade = hyper::upgrade::on(request);
        Some(Self(Arc::new(Mutex::new(Some(on_upgrade)))))
    }

    fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().ok()?.take()
    }
}

/// A valid WebSocket handshake request, ready to be answered.
pub struct WsUpgrade {
    key: HeaderValue,
    pending: PendingUpgrade,
}

/// Matches GET requests that are complete WebSocket handshakes (RFC 6455
/// §4.2.1); anything else is rejected to the next route.
pub fn websocket() -> impl Filter<Extract = (WsUpgrade,), Error = Rejection> + Clone {
    warp::get()
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PendingUpgrade>())
        .and_then(
            |headers: HeaderMap, pending: Option<PendingUpgrade>| async move {
                let is_handshake = header_has_token(&headers, header::CONNECTION, "upgrade")
                    && header_has_token(&headers, header::UPGRADE, "websocket")
                    && headers
                        .get(header::SEC_WEBSOCKET_VERSION)
                        .map(HeaderValue::as_bytes)
                        == Some(b"13");
                match (
                    is_handshake,
                    headers.get(header::SEC_WEBSOCKET_KEY),
                    pending,
                ) {
                    (true, Some(key), Some(pending)) => Ok(WsUpgrade {
                        key: key.clone(),
                        pending,
                    }),
                    _ => Err(warp::reject::not_found()),
                }
            },
        )
}

impl WsUpgrade {
    /// Answers 101 and, once hyper hands over the connection, runs
    /// `serve` on it in a task of its own: on `home` when given (a room
    /// thread, see [`crate::room::RoomThreads`]; a plain TCP socket moves
    /// there with it), else on the runtime this runs on.
    pub fn on_upgrade<F, Fut>(
        self,
        config: WebSocketConfig,
        home: Option<tokio::runtime::Handle>,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(on_upgrade) = self.pending.take() else {
            return warp::reply::with_status("upgrade already taken", StatusCode::BAD_REQUEST)
                .into_response();
        };
        let rehome = home.is_some();
        let upgrading = async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let (io, already_read) = match SocketIo::from_upgraded(upgraded, rehome) {
                        Ok(parts) => parts,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot move the socket to its room's thread");
                            return;
                        }
                    };
                    let io = match CountedIo::new(io, &already_read) {
                        Ok(io) => io,
                        Err(e) => {
                            tracing::warn!(error = %e, "refused before the first message");
                            return;
                        }
                    };
                    let socket = WebSocketStream::from_partially_read(
                        io,
                        already_read,
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    // A task of its own: awaited here, it would carry this
                    // block's state (the callback, the config) for the
                    // connection's whole life.
                    tokio::spawn(serve(socket));
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        };
        match home {
            Some(home) => drop(home.spawn(upgrading)),
            None => drop(tokio::spawn(upgrading)),
        }
        let mut response = Response::new(Default::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Buffers sized for Yjs traffic: mostly small messages, the occasional
/// big sync. The read buffer is allocated per connection up front and kept
/// for its life, so it is small: a keystroke's frame is under 100 bytes,
/// and a larger frame grows the buffer while it is read (1 KiB per read
/// call; a burst of frames costs a few more reads, an idle connection
/// 3 KiB less than at 4 KiB).
pub fn socket_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(32 * 1024)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}
