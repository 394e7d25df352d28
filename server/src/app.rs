//! What every request handler shares, and the one place it is put
//! together ([`App::build`]) for `serve` and the tests alike.

use std::sync::Arc;
use std::time::Duration;

use crdt_store::{RoomName, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::cluster::Cluster;
use crate::connection::ConnectionConfig;
use crate::limits::{Limits, LimitsConfig};
use crate::persist::{Journal, JournalConfig, JournalTask};
use crate::revocations::Revocations;
use crate::room::{RoomConfig, Rooms};
use crate::sessions::Sessions;

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

/// What an [`App`] is built from: the settings `serve`'s flags give, and
/// what was made from them beforehand (keys, certificates, the Redis
/// client), each of which can fail with its own flag's name.
pub struct AppConfig {
    pub room: RoomConfig,
    pub journal: JournalConfig,
    pub connection: ConnectionConfig,
    pub http: HttpLimits,
    pub limits: LimitsConfig,
    /// Connections one room accepts (checked before the upgrade too).
    pub room_max_connections: usize,
    /// Largest WebSocket message accepted, in bytes (bigger: close 1009).
    pub max_message_size: usize,
    /// Verifies tokens; `None` serves anonymously.
    pub auth: Option<Arc<Verifier>>,
    /// Origins browsers may connect from; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Serves TLS on the listening port when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How often revocations made through other nodes are picked up.
    pub revocation_refresh: Duration,
    /// Shares every room through Redis when set (cluster mode).
    pub cluster: Option<Arc<Cluster>>,
    /// Sends webhooks when set (`--webhook-url`).
    pub webhooks: Option<crate::webhooks::WebhookConfig>,
}

/// Why an [`App`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Serving without the revocations in force would let revoked tokens in.
    #[error("reading revocations")]
    Revocations(#[source] StoreError),
}

/// How often per-IP rate-limit state that limits nobody any more is
/// dropped, so the maps stay as small as the set of recent clients.
const FORGET_IDLE_CLIENTS_EVERY: Duration = Duration::from_secs(60);

impl App {
    /// Puts the app together over `store`: installs the metrics recorder,
    /// reads the revocations in force, starts the journal, and starts the
    /// app's background tasks (revocation refresh, forgetting idle
    /// clients) under [`App::tasks`], each stopped by [`App::shutdown`].
    ///
    /// The journal's own task is returned rather than tracked: it must
    /// outlive every room and connection, so that
    /// [`crate::server::run`] drains it after they have stopped.
    ///
    /// # Errors
    /// [`BuildError::Revocations`] when storage cannot list them; nothing
    /// is started then.
    pub async fn build(
        store: Arc<dyn Store>,
        config: AppConfig,
    ) -> Result<(App, JournalTask), BuildError> {
        let metrics = crate::metrics::install();
        let revocations = Arc::new(Revocations::new(store.clone()));
        revocations
            .refresh(chrono::Utc::now())
            .await
            .map_err(BuildError::Revocations)?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let journal_config = JournalConfig {
            // `document.changed` is counted with the edits it reports.
            count_unreported: config.webhooks.as_ref().is_some_and(|webhooks| {
                webhooks
                    .events
                    .allows(crate::webhooks::EventKind::DocumentChanged)
            }),
            ..config.journal
        };
        let (journal, journal_task) = Journal::start(store.clone(), journal_config);
        let rooms = Rooms::new(
            store.clone(),
            journal.clone(),
            config.room,
            shutdown.clone(),
            tasks.clone(),
        );
        if let Some(cluster) = config.cluster {
            rooms.set_cluster(cluster);
        }
        if let Some(webhooks) = config.webhooks {
            rooms.set_webhooks(crate::webhooks::Webhooks::start(
                store.clone(),
                webhooks,
                Arc::new(ReadRooms {
                    rooms: rooms.clone(),
                    store: store.clone(),
                }),
                shutdown.clone(),
                &tasks,
            ));
        }
        let app = App {
            rooms,
            store,
            journal,
            metrics,
            connection: Arc::new(config.connection),
            http: config.http,
            auth: config.auth,
            allowed_origins: config.allowed_origins.map(Arc::new),
            limits: Arc::new(Limits::new(config.limits)),
            tls: config.tls,
            room_max_connections: config.room_max_connections,
            max_message_size: config.max_message_size,
            shutdown,
            tasks,
            sessions: Arc::new(Sessions::default()),
            revocations,
        };
        app.tasks.spawn(crate::revocations::keep_fresh(
            app.revocations.clone(),
            app.sessions.clone(),
            config.revocation_refresh,
            app.shutdown.clone(),
        ));
        if let Some(cluster) = app.rooms.cluster() {
            let revocations = app.revocations.clone();
            app.tasks.spawn(
                cluster
                    .clone()
                    .watch_revocations(move || revocations.reload_soon(), app.shutdown.clone()),
            );
        }
        app.tasks.spawn(crate::limits::forget_idle_clients_every(
            app.limits.clone(),
            FORGET_IDLE_CLIENTS_EVERY,
            app.shutdown.clone(),
        ));
        Ok((app, journal_task))
    }
}

/// What webhooks read of the rooms: a loaded room is asked, never loaded
/// for this; a room not loaded here is read from storage.
struct ReadRooms {
    rooms: Rooms,
    store: Arc<dyn Store>,
}

impl crate::webhooks::RoomReader for ReadRooms {
    fn json(
        &self,
        room: RoomName,
    ) -> futures_util::future::BoxFuture<'static, Option<serde_json::Value>> {
        let rooms = self.rooms.clone();
        Box::pin(async move {
            match rooms
                .request_if_loaded(&room, crate::room::RoomRequest::Json)
                .await
            {
                Some(Ok(crate::room::RoomReply::Json(value))) => Some(value),
                _ => None,
            }
        })
    }

    fn state_vector(
        &self,
        room: RoomName,
    ) -> futures_util::future::BoxFuture<'static, Option<Vec<u8>>> {
        let (rooms, store) = (self.rooms.clone(), self.store.clone());
        Box::pin(async move {
            if let Some(Ok(crate::room::RoomReply::Info(info))) = rooms
                .request_if_loaded(&room, crate::room::RoomRequest::Info)
                .await
            {
                return Some(info.state_vector);
            }
            match crate::persist::load(&store, &room).await {
                Ok(loaded) => {
                    use yrs::updates::encoder::Encode;
                    use yrs::{ReadTxn, Transact};
                    Some(loaded.doc.doc.transact().state_vector().encode_v1())
                }
                Err(crate::persist::LoadError::Store(e)) => {
                    tracing::warn!(error = %e, %room, "cannot read the room for its state vector");
                    None
                }
                Err(e) => {
                    // Stored bytes that do not apply: the change is still
                    // reported, without a state vector.
                    tracing::error!(error = %e, "reporting a change of an unreadable room");
                    Some(Vec::new())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AppConfig {
        AppConfig {
            room: RoomConfig::default(),
            journal: JournalConfig::default(),
            connection: ConnectionConfig::default(),
            http: HttpLimits::default(),
            limits: LimitsConfig::default(),
            room_max_connections: 10_000,
            max_message_size: 16 << 20,
            auth: None,
            allowed_origins: None,
            tls: None,
            revocation_refresh: Duration::from_millis(10),
            cluster: None,
            webhooks: None,
        }
    }

    #[tokio::test]
    async fn shutdown_stops_every_task_the_build_started() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("app.db").display());
        let store = crdt_store::connect(&url).await.unwrap();
        let (app, journal) = App::build(store, config()).await.unwrap();
        assert_eq!(
            app.tasks.len(),
            2,
            "revocation refresh and forgetting idle clients"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(app.tasks.len(), 2, "both keep running until shutdown");

        app.shutdown.cancel();
        app.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), app.tasks.wait())
            .await
            .expect("every task stops at shutdown");
        assert!(journal.drain(Duration::from_secs(5)).await);
    }
}
