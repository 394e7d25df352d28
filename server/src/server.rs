//! The accept loop and the shutdown sequence.

use std::future::Future;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, error, info, warn};

use crate::app::App;
use crate::http::{self, PeerAddr};
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
    let service = warp::service(routes);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let shutdown = app.shutdown.clone();
                app.tasks.spawn(async move {
                    let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
                        request.extensions_mut().insert(PeerAddr(addr));
                        service.clone().oneshot(request)
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service),
                    );
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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received"),
        () = terminate => info!("SIGTERM received"),
    }
}
