//! Command-line interface. Every flag can also be set through the
//! environment variable shown in `--help`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app::HttpLimits;
use crate::cli_security::{AuthArgs, LimitArgs, TlsArgs, TokenArgs};
use crate::connection::ConnectionConfig;
use crate::logging::LogFormat;
use crate::persist::JournalConfig;
use crate::room::RoomConfig;
use crate::subdocs::SubdocPolicy;
use crate::units::{parse_duration, parse_size};

#[derive(Debug, Parser)]
#[command(
    name = "crdt-hub",
    version,
    about = "A fast, durable Yjs sync server, compatible with y-websocket clients.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: human-readable text or one JSON object per line.
    /// Verbosity follows RUST_LOG (default: info).
    #[arg(
        long,
        global = true,
        env = "CRDT_HUB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sync server.
    ///
    /// Clients connect with y-websocket:
    /// new WebsocketProvider('ws://127.0.0.1:1234', 'my-room', doc)
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit (serve also does this at start).
    Migrate(DatabaseArgs),
    /// Mint an HS256 token (printed alone on stdout) for development and scripts.
    Token(TokenArgs),
    /// List, export, import and restore the versions of stored rooms.
    Snapshot(crate::snapshot::SnapshotArgs),
    /// List and redeliver webhook events (--webhook-url), from the database.
    Webhooks(crate::webhooks::cli::WebhooksArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Where documents are stored: sqlite://PATH (an embedded file, created
    /// on first use) or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://crdt-hub.db")]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CRDT_HUB_BIND", default_value = "127.0.0.1:1234")]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,

    #[command(flatten)]
    pub webhooks: crate::webhooks::args::WebhookArgs,

    /// SQLite's page cache for each of the 4 pooled connections (the
    /// operating system caches the file besides it); ignored on Postgres.
    #[arg(long, env = "CRDT_HUB_SQLITE_CACHE_SIZE", default_value = "512KiB", value_parser = parse_size)]
    pub sqlite_cache_size: usize,

    /// Largest WebSocket message a client may send; bigger ones close the
    /// connection with 1009.
    #[arg(long, env = "CRDT_HUB_MAX_MESSAGE_SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub max_message_size: usize,

    /// A room with no connection for this long is saved and unloaded from memory.
    #[arg(long, env = "CRDT_HUB_ROOM_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub room_idle_timeout: Duration,

    /// Idle connections are pinged this often; one silent for two intervals is closed.
    #[arg(long, env = "CRDT_HUB_KEEPALIVE_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// Frames queued for one client before it counts as too slow and is
    /// closed with 1013 (it reconnects and resyncs; nothing is dropped).
    #[arg(long, env = "CRDT_HUB_MAX_QUEUED_FRAMES", default_value = "2048")]
    pub max_queued_frames: usize,

    /// Bytes waiting for one client, behind the frame it is being sent,
    /// before it counts as too slow and is closed with 1013 (it reconnects
    /// and resyncs; nothing is dropped). Raised to at least
    /// --max-message-size.
    #[arg(long, env = "CRDT_HUB_MAX_QUEUED_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub max_queued_bytes: usize,

    /// Documents one Hocuspocus socket (a `HocuspocusProviderWebsocket`
    /// shared by several providers) may have open at once; a provider past
    /// it is told "permission denied" with the reason.
    #[arg(
        long,
        env = "CRDT_HUB_MAX_DOCUMENTS_PER_CONNECTION",
        default_value = "100"
    )]
    pub max_documents_per_connection: usize,

    /// A busy room holds a frame for up to this long when its recent pace
    /// says the next will come by then, and sends them together, several
    /// frames per socket write (only for the next frame, not the one
    /// after; see `room/fanout.rs`). A room whose edits come further apart
    /// than this, such as one with a single typist, sends each frame at
    /// once. 0 never holds. Tokio's timers round up to whole milliseconds. Under heavy
    /// load the default roughly halves the room's writes for a few
    /// milliseconds of latency (BENCHMARKS.md).
    #[arg(long, env = "CRDT_HUB_FANOUT_WINDOW", default_value = "5ms", value_parser = parse_duration)]
    pub fanout_window: Duration,

    /// A room sends awareness (cursors, who is here) at most once per this
    /// long: changes that come sooner after its last awareness message
    /// wait, the newest per client, and go out together as one message
    /// (one frame per peer however many clients moved; stock Yjs clients
    /// apply it entry by entry). A room whose changes come further apart
    /// sends each at once. 0 sends every change as it comes, one frame per
    /// change and peer: n² frames in a room where everyone moves.
    #[arg(long, env = "CRDT_HUB_AWARENESS_WINDOW", default_value = "20ms", value_parser = parse_duration)]
    pub awareness_window: Duration,

    /// Longest a socket write may block before the client counts as dead.
    #[arg(long, env = "CRDT_HUB_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Accepted updates are appended to the update log in one batch per
    /// window: a hard crash loses at most this much.
    #[arg(long, env = "CRDT_HUB_FLUSH_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// Bytes of updates that may wait for an unreachable database; past it,
    /// rooms refuse new updates (clients closed with 1013) rather than drop any.
    #[arg(long, env = "CRDT_HUB_MAX_PENDING_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub max_pending_bytes: usize,

    /// A changed room writes a compacted snapshot (and trims its log) this often.
    #[arg(long, env = "CRDT_HUB_SNAPSHOT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub snapshot_interval: Duration,

    /// ...or as soon as this many of its updates are not in a snapshot.
    #[arg(long, env = "CRDT_HUB_SNAPSHOT_MAX_UPDATES", default_value = "10000")]
    pub snapshot_max_updates: u64,

    /// ...or as soon as this many bytes of its updates are not in a snapshot.
    #[arg(long, env = "CRDT_HUB_SNAPSHOT_MAX_BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub snapshot_max_bytes: usize,

    /// Snapshots kept per room as version history.
    #[arg(long, env = "CRDT_HUB_KEEP_SNAPSHOTS", default_value = "20")]
    pub keep_snapshots: usize,

    /// Longest an HTTP request may take to produce its response head (408 after).
    #[arg(long, env = "CRDT_HUB_HTTP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_timeout: Duration,

    /// Longest a client may take to send a request's head (request line
    /// and headers), from its connection or its previous request; then the
    /// socket is closed. Keeps idle and trickling sockets from holding file
    /// descriptors. 0 turns it off.
    #[arg(long, env = "CRDT_HUB_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// HTTP requests handled at once; more wait their turn.
    #[arg(long, env = "CRDT_HUB_HTTP_CONCURRENCY", default_value = "512")]
    pub http_concurrency: usize,

    /// At shutdown, how long rooms wait for their connections to close.
    #[arg(long, env = "CRDT_HUB_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often revocations are reloaded from the database: one made
    /// through another node of a cluster closes this node's sessions within
    /// this long (one made here, at once).
    #[arg(long, env = "CRDT_HUB_REVOCATION_REFRESH", default_value = "2s", value_parser = parse_duration)]
    pub revocation_refresh: Duration,

    /// Whether updates may create subdocuments (`Y.Doc`s inside a
    /// document). refuse: such updates close the WebSocket with 1003 and
    /// get 400 from the API; subdocuments already stored still load.
    /// allow: accepted; yrs 0.28.1 frees memory it still uses when a
    /// container holding a subdocument is deleted, so allow them only when
    /// every writer is trusted (docs/subdocuments.md).
    #[arg(
        long,
        env = "CRDT_HUB_SUBDOCUMENTS",
        value_enum,
        default_value = "refuse"
    )]
    pub subdocuments: SubdocumentsArg,

    /// Threads of the shared pool (default: one per CPU core): HTTP, the
    /// WebSocket handshake, the journal, Hocuspocus connections (which
    /// multiplex rooms), and the rooms themselves with --room-threads 0.
    /// The database uses other threads either way.
    #[arg(long, env = "CRDT_HUB_WORKER_THREADS")]
    pub worker_threads: Option<NonZeroUsize>,

    /// Threads that each run a share of the rooms, picked by a hash of the
    /// room's name, with the rooms' y-websocket connections (default 0:
    /// rooms and connections run on the shared pool). A keystroke then
    /// stays on one thread from the read to the writes to its peers: 5–11 %
    /// less CPU per delivery in the fan-out benchmark at 45k–90k deliveries/s,
    /// 10 % more at 18k (BENCHMARKS.md, "Room threads"). But a room busy
    /// with large updates then delays every room
    /// on its thread, where the shared pool lets the other rooms run on
    /// another worker: turn it on (one per core) only when every writer is
    /// trusted.
    #[arg(long, env = "CRDT_HUB_ROOM_THREADS", default_value_t = 0)]
    pub room_threads: usize,
}

/// The values of `--subdocuments`: clap's side of [`SubdocPolicy`], which
/// lives in `crdt-hub-core` and knows nothing of clap. Same variants, same
/// help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubdocumentsArg {
    /// Updates that create a subdocument are refused (WebSocket: close
    /// 1003; API: 400). Subdocuments already stored still load.
    Refuse,
    /// Updates may create subdocuments. yrs 0.28.1 frees memory it still
    /// uses when a container holding a subdocument is deleted: allow only
    /// when every writer is trusted.
    Allow,
}

impl From<SubdocumentsArg> for SubdocPolicy {
    fn from(arg: SubdocumentsArg) -> Self {
        match arg {
            SubdocumentsArg::Refuse => SubdocPolicy::Refuse,
            SubdocumentsArg::Allow => SubdocPolicy::Allow,
        }
    }
}

impl ServeArgs {
    pub fn room_config(&self) -> RoomConfig {
        RoomConfig {
            idle_timeout: self.room_idle_timeout,
            keep_snapshots: self.keep_snapshots.max(1),
            shutdown_grace: self.shutdown_grace,
            snapshot_interval: self.snapshot_interval.max(Duration::from_millis(10)),
            snapshot_max_updates: self.snapshot_max_updates.max(1),
            snapshot_max_bytes: self.snapshot_max_bytes as u64,
            max_connections: self.limits.max_connections_per_room.max(1),
            max_rooms: self.limits.max_rooms.max(1),
            max_document_bytes: self.limits.max_doc_size as u64,
            fanout_window: self.fanout_window.min(Duration::from_secs(1)),
            awareness_window: self.awareness_window.min(Duration::from_secs(1)),
            presence: self.limits.presence_caps(),
            ..RoomConfig::default()
        }
    }

    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            timeout: self.http_timeout,
            concurrency: self.http_concurrency.max(1),
            header_read_timeout: Some(self.header_read_timeout).filter(|t| !t.is_zero()),
        }
    }

    pub fn journal_config(&self) -> JournalConfig {
        JournalConfig {
            flush_interval: self.flush_interval,
            max_pending_bytes: self.max_pending_bytes,
            ..JournalConfig::default()
        }
    }

    pub fn connection_config(&self) -> ConnectionConfig {
        ConnectionConfig {
            outbox_capacity: self.max_queued_frames.max(1),
            // One largest update must always be able to wait.
            outbox_max_bytes: self.max_queued_bytes.max(self.max_message_size),
            keepalive_interval: self.keepalive_interval.max(Duration::from_millis(100)),
            write_timeout: self.write_timeout,
            subdocuments: self.subdocuments.into(),
            awareness: self.limits.awareness_state_limits(),
            max_documents: self.max_documents_per_connection.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["crdt-hub", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.bind.to_string(), "127.0.0.1:1234");
        assert_eq!(args.max_message_size, 16 << 20);
        assert_eq!(args.room_idle_timeout, Duration::from_secs(60));
        assert_eq!(args.worker_threads, None);
        assert_eq!(args.room_threads, 0);
        assert_eq!(args.header_read_timeout, Duration::from_secs(5));
        let limits = args.limits.limits_config(args.max_message_size);
        assert_eq!(limits.max_connections_per_ip, 256);
        assert_eq!(limits.max_body_size, 64 << 20);
        assert_eq!(limits.max_body_bytes_in_flight, 256 << 20);
        assert_eq!(args.connection_config().subdocuments, SubdocPolicy::Refuse);
    }

    #[test]
    fn subdocuments_flag_reaches_the_connections() {
        let cli = Cli::try_parse_from(["crdt-hub", "serve", "--subdocuments", "allow"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.connection_config().subdocuments, SubdocPolicy::Allow);
    }

    #[test]
    fn room_threads_are_asked_for_by_number() {
        let cli = Cli::try_parse_from(["crdt-hub", "serve", "--room-threads", "2"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.room_threads, 2);
    }

    #[test]
    fn worker_threads_are_at_least_one() {
        let serve = |n: &str| Cli::try_parse_from(["crdt-hub", "serve", "--worker-threads", n]);
        assert!(serve("0").is_err());
        let Command::Serve(args) = serve("1").unwrap().command else {
            panic!("not serve")
        };
        assert_eq!(args.worker_threads, NonZeroUsize::new(1));
    }
}
