//! What every request handler shares.

use std::sync::Arc;

use crdt_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::ConnectionConfig;
use crate::persist::Journal;
use crate::room::Rooms;

/// Limits on plain HTTP requests.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest time to produce a response's head.
    pub timeout: std::time::Duration,
    /// Requests handled at once; more wait their turn.
    pub concurrency: usize,
    /// Longest a client may take to send a request head; `None`: forever.
    pub header_read_timeout: Option<std::time::Duration>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            timeout: std::time::Duration::from_secs(30),
            concurrency: 512,
            header_read_timeout: Some(std::time::Duration::from_secs(5)),
        }
    }
}

/// Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct App {
    pub rooms: Rooms,
    pub store: Arc<dyn Store>,
    /// The group-commit write path every accepted update goes through.
    pub journal: Journal,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub connection: Arc<ConnectionConfig>,
    pub http: HttpLimits,
    /// Verifies tokens; `None` serves anonymously.
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// Origins browsers may connect from; `None` allows any.
    pub allowed_origins: Option<Arc<Vec<String>>>,
    pub limits: Arc<crate::limits::Limits>,
    /// Serves TLS on the listening port when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Connections one room accepts (checked before the upgrade too).
    pub room_max_connections: usize,
    /// Largest WebSocket message accepted, in bytes (bigger: close 1009).
    pub max_message_size: usize,
    /// Cancelled once when shutdown starts; everything long-lived watches it.
    pub shutdown: CancellationToken,
    /// Tracks connection and room tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Live sessions, so that access that ends ends them.
    pub sessions: Arc<crate::sessions::Sessions>,
    /// Revoked subjects and tokens, as this node knows them.
    pub revocations: Arc<crate::revocations::Revocations>,
}
