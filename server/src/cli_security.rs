//! Flags for authentication, limits and TLS (part of `crdt-hub serve`), and
//! `crdt-hub token`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::auth::Role;
use crate::awareness_guard::{MAX_CHECKABLE_DEPTH, StateLimits};
use crate::limits::LimitsConfig;
use crate::room::presence::PresenceCaps;
use crate::units::{parse_duration, parse_size};

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Require an HS256 JWT signed with this secret on every WebSocket and
    /// API request (?token= or Authorization: Bearer).
    #[arg(
        long,
        env = "CRDT_HUB_AUTH_SECRET",
        hide_env_values = true,
        conflicts_with = "auth_public_key"
    )]
    pub auth_secret: Option<String>,

    /// Require a JWT signed with the private half of this PEM public key
    /// (RS256 for RSA, EdDSA for Ed25519).
    #[arg(
        long,
        env = "CRDT_HUB_AUTH_PUBLIC_KEY",
        value_name = "FILE",
        conflicts_with = "auth_jwks"
    )]
    pub auth_public_key: Option<PathBuf>,

    /// Require a JWT signed by one of the keys of this JSON Web Key Set
    /// (RSA, Ed25519, P-256 or oct; picked by the token's `kid`): rotate
    /// keys by publishing the new one beside the old.
    #[arg(
        long,
        env = "CRDT_HUB_AUTH_JWKS",
        value_name = "FILE",
        conflicts_with = "auth_secret"
    )]
    pub auth_jwks: Option<PathBuf>,

    /// Refuse to start without --auth-secret or --auth-public-key.
    #[arg(long, env = "CRDT_HUB_REQUIRE_AUTH")]
    pub require_auth: bool,

    /// Clock skew tolerated between the token issuer and this server: a
    /// token is accepted this long after its `exp` and this long before
    /// its `nbf`.
    #[arg(long, env = "CRDT_HUB_AUTH_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub auth_leeway: Duration,

    /// Browser origins allowed to open WebSockets, comma-separated
    /// (e.g. `https://app.example.com`); `*` allows any. Default: any.
    #[arg(long, env = "CRDT_HUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Open WebSocket connections over all rooms; more get 503 before the upgrade.
    #[arg(long, env = "CRDT_HUB_MAX_CONNECTIONS", default_value = "50000")]
    pub max_connections: usize,

    /// A client whose updates a room refuses (too large for --max-doc-size,
    /// a subdocument, bytes that do not apply) waits 1 s before it may open
    /// that room again, twice as long after each further refusal, up to
    /// this; meanwhile its upgrades get 429 with Retry-After. The wait is
    /// per client address: behind a proxy that hides them, 0 turns it off.
    #[arg(long, env = "CRDT_HUB_REFUSAL_MAX_DELAY", default_value = "60s", value_parser = parse_duration)]
    pub refusal_max_delay: Duration,

    /// Connections one room accepts; more get 503 (or close 1013).
    #[arg(
        long,
        env = "CRDT_HUB_MAX_CONNECTIONS_PER_ROOM",
        default_value = "10000"
    )]
    pub max_connections_per_room: usize,

    /// Rooms held in memory; a join that would load one more is refused (1013).
    #[arg(long, env = "CRDT_HUB_MAX_ROOMS", default_value = "100000")]
    pub max_rooms: usize,

    /// An update that would grow a document past this size is refused and
    /// its client closed with 1009.
    #[arg(long, env = "CRDT_HUB_MAX_DOC_SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub max_doc_size: usize,

    /// Longest awareness state (one client's presence, as JSON) a client
    /// may send; a longer one closes its connection with 1009.
    #[arg(long, env = "CRDT_HUB_MAX_AWARENESS_BYTES", default_value = "64KiB", value_parser = parse_size)]
    pub max_awareness_bytes: usize,

    /// Deepest nesting of arrays and objects in an awareness state (at
    /// most 128); a deeper one, or one that is not JSON, closes its
    /// connection with 1002.
    #[arg(long, env = "CRDT_HUB_MAX_AWARENESS_DEPTH", default_value = "64")]
    pub max_awareness_depth: usize,

    /// Awareness client ids one connection may set in its room (a browser
    /// tab sets one; y-websocket one per document). Entries for more are
    /// ignored, not forwarded.
    #[arg(long, env = "CRDT_HUB_MAX_AWARENESS_CLIENTS", default_value = "4")]
    pub max_awareness_clients: usize,

    /// Bytes of awareness states one room's connections may hold in all
    /// (on this node): what a joiner is sent at most. A state that would
    /// pass it is ignored.
    #[arg(long, env = "CRDT_HUB_MAX_AWARENESS_ROOM_BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_awareness_room_bytes: usize,

    /// Messages per second one connection may send (sustained).
    #[arg(long, env = "CRDT_HUB_RATE_MESSAGES", default_value = "200")]
    pub rate_messages: u32,

    /// Messages one connection may send in a burst above the rate.
    #[arg(long, env = "CRDT_HUB_RATE_MESSAGE_BURST", default_value = "1000")]
    pub rate_message_burst: u32,

    /// Bytes per second one connection may send (sustained).
    #[arg(long, env = "CRDT_HUB_RATE_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub rate_bytes: usize,

    /// Bytes one connection may send in a burst (raised to at least
    /// --max-message-size).
    #[arg(long, env = "CRDT_HUB_RATE_BYTE_BURST", default_value = "32MiB", value_parser = parse_size)]
    pub rate_byte_burst: usize,

    /// A connection over its rate is paused (not read); one paused
    /// continuously for this long is closed with 1008.
    #[arg(long, env = "CRDT_HUB_RATE_MAX_THROTTLED", default_value = "10s", value_parser = parse_duration)]
    pub rate_max_throttled: Duration,

    /// New WebSocket connections per second from one IP address (429 over it).
    #[arg(long, env = "CRDT_HUB_RATE_CONNECTIONS_PER_IP", default_value = "50")]
    pub rate_connections_per_ip: u32,

    /// Burst of new connections from one IP address.
    #[arg(
        long,
        env = "CRDT_HUB_RATE_CONNECTION_BURST_PER_IP",
        default_value = "200"
    )]
    pub rate_connection_burst_per_ip: u32,

    /// HTTP API requests per second from one IP address (429 over it).
    #[arg(long, env = "CRDT_HUB_RATE_API_PER_IP", default_value = "100")]
    pub rate_api_per_ip: u32,

    /// Burst of HTTP API requests from one IP address.
    #[arg(long, env = "CRDT_HUB_RATE_API_BURST_PER_IP", default_value = "200")]
    pub rate_api_burst_per_ip: u32,

    /// Open TCP connections from one IP address (IPv6: one /64), counted
    /// from accept, before any HTTP is read, and kept by WebSockets; more
    /// are closed at once. Bounds the file descriptors one address can
    /// hold. Behind a proxy every client shares the proxy's address: raise
    /// it, or limit per client in the proxy.
    #[arg(long, env = "CRDT_HUB_MAX_CONNECTIONS_PER_IP", default_value = "256")]
    pub max_connections_per_ip: usize,

    /// Largest request body (POST /api/rooms/{room}/update); larger get 413.
    /// Bodies must carry a Content-Length (chunked: 411).
    #[arg(long, env = "CRDT_HUB_MAX_BODY_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_body_size: usize,

    /// Request body bytes held at once over the whole server. A body that
    /// does not fit waits up to 1 s for others to finish, then gets 503
    /// with Retry-After. --max-body-size is lowered to it.
    #[arg(
        long,
        env = "CRDT_HUB_MAX_BODY_BYTES_IN_FLIGHT",
        default_value = "256MiB",
        value_parser = parse_size
    )]
    pub max_body_bytes_in_flight: usize,
}

impl LimitArgs {
    /// Bounds on each awareness state.
    pub fn awareness_state_limits(&self) -> StateLimits {
        StateLimits {
            max_bytes: self.max_awareness_bytes,
            max_depth: self.max_awareness_depth.clamp(1, MAX_CHECKABLE_DEPTH),
        }
    }

    /// What one room's connections may hold of awareness.
    pub fn presence_caps(&self) -> PresenceCaps {
        PresenceCaps {
            clients_per_connection: self.max_awareness_clients.max(1),
            // At least one connection's largest state fits.
            room_bytes: self.max_awareness_room_bytes.max(self.max_awareness_bytes),
        }
    }

    pub fn limits_config(&self, max_message_size: usize) -> LimitsConfig {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        LimitsConfig {
            messages_per_second: self.rate_messages,
            message_burst: self.rate_message_burst,
            bytes_per_second: clamp(self.rate_bytes),
            // A single largest-allowed message must always be able to pass.
            byte_burst: clamp(self.rate_byte_burst.max(max_message_size)),
            max_throttled: self.rate_max_throttled,
            connections_per_ip_per_second: self.rate_connections_per_ip,
            connection_burst_per_ip: self.rate_connection_burst_per_ip,
            api_requests_per_second: self.rate_api_per_ip,
            api_burst: self.rate_api_burst_per_ip,
            max_connections: self.max_connections,
            refusal_max_delay: self.refusal_max_delay,
            max_connections_per_ip: self.max_connections_per_ip,
            max_body_size: self.max_body_size,
            max_body_bytes_in_flight: self.max_body_bytes_in_flight,
            ..LimitsConfig::default()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Serve wss:// and https:// with this certificate chain (PEM).
    #[arg(
        long,
        env = "CRDT_HUB_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "CRDT_HUB_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// `crdt-hub token`: mint a token for development and scripts.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Example:\n  crdt-hub token --auth-secret \"$SECRET\" --room 'docs/*' --role write --ttl 1h"
)]
pub struct TokenArgs {
    /// The HS256 secret the server checks tokens with.
    #[arg(long, env = "CRDT_HUB_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: String,

    /// A room name or glob pattern the token grants (repeatable).
    #[arg(long = "room", required = true)]
    pub rooms: Vec<String>,

    /// What the bearer may do.
    #[arg(long, value_enum, default_value = "write")]
    pub role: Role,

    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Who the token is for (its `sub` claim): shown in the server's logs,
    /// and how `POST /api/revocations` ends every session of one person.
    #[arg(long)]
    pub sub: Option<String>,
}
