//! The accept loop and the shutdown sequence.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, error, info, warn};

use crate::accept_backoff::AcceptBackoff;
use crate::app::App;
use crate::http::websocket::PendingUpgrade;
use crate::http::{self, PeerAddr};
use crate::ip_connections::IpSlot;
use crate::metrics;
use crate::persist::JournalTask;

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every changed room was written to storage.
    Clean,
    /// Some room could not be saved before the shutdown deadline.
    SaveFailed,
}

/// How long shutdown keeps retrying to write pending updates to a failing
/// database before giving up (and exiting non-zero).
const JOURNAL_DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Serves `listener` until `shutdown` resolves, then closes every
/// connection with 1001, writes every pending update and returns.
pub async fn run(
    listener: TcpListener,
    app: App,
    journal: JournalTask,
    shutdown: impl Future<Output = ()>,
) -> Outcome {
    let routes = http::routes(app.clone());
    // tower middleware around every HTTP request (WebSocket handshakes
    // included): a span per request, a deadline for producing the response
    // head (streams like SSE and upgraded sockets are not cut by it), a cap
    // on requests in flight, and gzip for JSON and text (not for event
    // streams or already-compressed assets).
    let service = tower::ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            warp::http::StatusCode::REQUEST_TIMEOUT,
            app.http.timeout,
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            app.http.concurrency,
        ))
        .layer(tower_http::compression::CompressionLayer::new())
        .service(warp::service(routes));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    let mut over_cap = OverCapLog::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        let delay = backoff.failed(&e);
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = &mut shutdown => break,
                        }
                        continue;
                    }
                };
                backoff.succeeded();
                // Counted before a byte is read: a socket over its
                // address's cap is closed now, holding nothing.
                let Some(ip_slot) = app.limits.ip_connections.open(addr.ip()) else {
                    over_cap.refused(addr, app.limits.ip_connections.max_per_ip());
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let shutdown = app.shutdown.clone();
                let tls = app.tls.clone();
                let http = Http {
                    addr,
                    ip_slot,
                    header_read_timeout: app.http.header_read_timeout,
                };
                app.tasks.spawn(async move {
                    match tls {
                        None => serve_http(stream, http, service, shutdown).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => serve_http(stream, http, service, shutdown).await,
                                Ok(Err(e)) => debug!(error = %e, %addr, "TLS handshake failed"),
                                Err(_) => debug!(%addr, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!(
        rooms = app.rooms.len(),
        "shutting down: closing connections and saving rooms"
    );
    app.shutdown.cancel();
    app.tasks.close();
    app.tasks.wait().await;
    let pending = app.journal.status();
    info!(
        pending_bytes = pending.pending_bytes,
        "connections and rooms stopped; writing pending updates"
    );
    if journal.drain(JOURNAL_DRAIN_DEADLINE).await {
        let status = app.journal.status();
        info!(
            updates = status.written_updates,
            batches = status.written_batches,
            "shutdown complete: every accepted update is in storage"
        );
        Outcome::Clean
    } else {
        error!(
            pending_bytes = app.journal.status().pending_bytes,
            "shutdown finished, but storage failed: the pending updates are lost from the server (clients still hold them)"
        );
        Outcome::SaveFailed
    }
}

/// Longest a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts and now and then logs sockets closed for being over
/// `--max-connections-per-ip`: an attacker opening thousands a second must
/// not turn into thousands of log lines.
#[derive(Debug, Default)]
struct OverCapLog {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl OverCapLog {
    fn refused(&mut self, addr: SocketAddr, max: usize) {
        metrics::rate_limited("connections_per_ip");
        self.unlogged += 1;
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            warn!(
                ip = %addr.ip(),
                refused = self.unlogged,
                "closed new connections over --max-connections-per-ip ({max}) at accept"
            );
            self.last_logged = Some(std::time::Instant::now());
            self.unlogged = 0;
        }
    }
}

/// One accepted connection, as the HTTP layer sees it.
struct Http {
    addr: SocketAddr,
    /// Its place under `--max-connections-per-ip`: held while the socket
    /// serves HTTP and lent to every request, so that a WebSocket that
    /// upgrades keeps it until the socket closes.
    ip_slot: IpSlot,
    header_read_timeout: Option<Duration>,
}

/// Serves HTTP/1.1 (with upgrades) on one accepted connection until it
/// ends or shutdown asks it to finish.
async fn serve_http<IO, S, B>(
    io: IO,
    http: Http,
    service: S,
    shutdown: tokio_util::sync::CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Http {
        addr,
        ip_slot,
        header_read_timeout,
    } = http;
    let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(addr));
        request.extensions_mut().insert(ip_slot.clone());
        if let Some(upgrade) = PendingUpgrade::extract(&mut request) {
            request.extensions_mut().insert(upgrade);
        }
        service.clone().oneshot(request)
    });
    // HTTP/1.1 only, served by hyper's own builder: an upgraded socket then
    // comes back as the `TokioIo<TcpStream>` handed in here, which the
    // WebSocket layer takes out of hyper to share with the room
    // (`shared_socket`); hyper-util's auto builder wraps it in a private
    // type. (HTTP/2 was never enabled.)
    //
    // The header read timeout runs from the connection's start and again
    // after each response, until the next request head is complete: an
    // idle keep-alive socket or one trickling its headers a byte at a time
    // is closed then, instead of holding a file descriptor forever.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "http connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}

/// Listens for SIGINT and SIGTERM from the moment it is called (so a
/// signal that arrives right after "listening" is not the default action's
/// to take), and returns a future that resolves on the first of them.
///
/// # Errors
/// When the signal handlers cannot be installed.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received"),
            _ = terminate.recv() => info!("SIGTERM received"),
        }
    })
}
