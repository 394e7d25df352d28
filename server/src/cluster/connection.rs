//! One Redis, or a Redis Cluster (`--redis-cluster`), behind the same
//! commands. Every command the bus sends names keys of one room only, which
//! share the room's hash tag (see `room_key`), or no key at all (`PUBLISH`),
//! so the redis crate's cluster client can route each to the master of its
//! slot and follow `MOVED`/`ASK` and topology changes by itself; nothing
//! here knows about slots.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::{
    ClusterClient, ClusterClientBuilder, ClusterConfig as ClusterConnectionConfig,
};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, PushKind, RedisFuture, RedisResult, Value};

/// How long connecting to one Redis (or one cluster node) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command that answers at once may take (blocking reads have
/// no such limit: their reader bounds each read).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a node finds Redis; makes the connections the bus uses.
#[expect(
    clippy::large_enum_variant,
    reason = "one per node, made once: its size does not matter"
)]
pub enum Redis {
    Single(redis::Client),
    Cluster(ClusterClients),
}

/// The cluster client takes its timeouts (and protocol) per client, not
/// per connection: one client per kind of connection.
pub struct ClusterClients {
    shared: ClusterClient,
    blocking: ClusterClient,
    /// RESP3: the cluster client subscribes only over it.
    pubsub: ClusterClient,
}

/// A connection of either kind; what the bus's commands run on.
#[derive(Clone)]
pub enum Connection {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Redis {
    /// Checks the URL(s); connects to nothing yet. In cluster mode `url`
    /// names one or more seed nodes, comma-separated. With `ca_pem`,
    /// rediss:// connections (to every cluster node, too) trust those CA
    /// certificates instead of the system's roots.
    ///
    /// # Errors
    /// When a URL is invalid, or several are given outside cluster mode.
    pub fn open(url: &str, cluster: bool, ca_pem: Option<Vec<u8>>) -> RedisResult<Self> {
        if !cluster {
            if url.contains(',') {
                return Err(invalid("several Redis URLs need --redis-cluster"));
            }
            let client = match ca_pem {
                Some(root_cert) => redis::Client::build_with_tls(url, certificates(root_cert))?,
                None => redis::Client::open(url)?,
            };
            return Ok(Self::Single(client));
        }
        let seeds: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|seed| !seed.is_empty())
            .collect();
        // Only when every seed speaks TLS: `certs` would turn TLS on for
        // plain seeds, and mixed seeds are refused by the crate.
        let tls = seeds
            .iter()
            .all(|seed| seed.to_ascii_lowercase().starts_with("rediss://"));
        let client = |tweak: fn(ClusterClientBuilder) -> ClusterClientBuilder| {
            let mut builder = ClusterClientBuilder::new(seeds.iter().copied())
                .connection_timeout(CONNECT_TIMEOUT)
                // Fail fast while the cluster is away (the callers back off
                // and anti-entropy repairs), yet follow a MOVED or two.
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(500);
            if let (true, Some(root_cert)) = (tls, &ca_pem) {
                builder = builder.certs(certificates(root_cert.clone()));
            }
            tweak(builder).build()
        };
        Ok(Self::Cluster(ClusterClients {
            shared: client(|b| b.response_timeout(RESPONSE_TIMEOUT))?,
            blocking: client(|b| b.overall_response_timeout(None))?,
            pubsub: client(|b| {
                b.response_timeout(RESPONSE_TIMEOUT)
                    .use_protocol(redis::ProtocolVersion::RESP3)
            })?,
        }))
    }

    /// The node's shared, multiplexed connection: it connects on first use
    /// (a node starts, and serves locally, while Redis is unreachable) and
    /// reconnects by itself. Never for blocking commands: they would hold
    /// up every room's commands behind them.
    ///
    /// # Errors
    /// The crate's, for a client it cannot use.
    pub fn shared(&self) -> RedisResult<Connection> {
        match self {
            Self::Single(client) => client
                .get_connection_manager_lazy(
                    redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(RESPONSE_TIMEOUT))
                        .set_max_delay(Duration::from_secs(2))
                        // Fail fast while Redis is away: the publisher drops
                        // and backs off, anti-entropy repairs; nothing waits
                        // on it.
                        .set_number_of_retries(1),
                )
                .map(Connection::Manager),
            Self::Cluster(clients) => Ok(Connection::Cluster(
                clients
                    .shared
                    .get_pending_async_connection_with_config(connection_config()),
            )),
        }
    }

    /// A connection of its own, for one room's blocking reads: in cluster
    /// mode one socket per master, so a read blocking on one slot's master
    /// holds up no other room.
    ///
    /// # Errors
    /// When Redis (no seed node) cannot be reached.
    pub async fn dedicated(&self) -> RedisResult<Connection> {
        match self {
            Self::Single(client) => client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(None),
                )
                .await
                .map(Connection::Multiplexed),
            Self::Cluster(clients) => clients
                .blocking
                .get_async_connection_with_config(
                    ClusterConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT),
                )
                .await
                .map(Connection::Cluster),
        }
    }

    /// Subscribes to `channel`. A `PUBLISH` reaches every node of a Redis
    /// Cluster, so one subscription anywhere hears all of them.
    ///
    /// # Errors
    /// When Redis cannot be reached or refuses (in cluster mode the
    /// subscription needs RESP3: Redis 6 or newer).
    pub async fn subscribe(&self, channel: &str) -> RedisResult<Subscription> {
        match self {
            Self::Single(client) => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok(Subscription::Single {
                    messages: pubsub.into_on_message(),
                    told: false,
                })
            }
            Self::Cluster(clients) => {
                let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
                let mut connection = clients
                    .pubsub
                    .get_async_connection_with_config(connection_config().set_push_sender(sender))
                    .await?;
                connection.subscribe(channel).await?;
                Ok(Subscription::Cluster {
                    _connection: connection,
                    pushes,
                })
            }
        }
    }
}

fn certificates(root_cert: Vec<u8>) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }
}

fn connection_config() -> ClusterConnectionConfig {
    // A connection's config replaces the client's response timeout.
    ClusterConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
}

fn invalid(message: &'static str) -> redis::RedisError {
    (ErrorKind::InvalidClientConfig, message).into()
}

/// What a subscription hears.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// Subscribed, first or again after a reconnect: whatever was
    /// published meanwhile was missed.
    Subscribed,
    /// A message, with its payload.
    Message(String),
}

pub enum Subscription {
    Single {
        messages: redis::aio::PubSubStream,
        told: bool,
    },
    Cluster {
        _connection: ClusterConnection,
        pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    },
}

impl Subscription {
    /// The next notice; `None` once the subscription is lost (subscribe
    /// again). The cluster client resubscribes by itself after a
    /// reconnect, and says so with [`Notice::Subscribed`].
    pub async fn next(&mut self) -> Option<Notice> {
        match self {
            Self::Single { messages, told } => {
                if !std::mem::replace(told, true) {
                    return Some(Notice::Subscribed);
                }
                let message = messages.next().await?;
                Some(Notice::Message(message.get_payload().unwrap_or_default()))
            }
            Self::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::Subscribe => return Some(Notice::Subscribed),
                    PushKind::Message => {
                        let payload = push
                            .data
                            .into_iter()
                            .nth(1)
                            .and_then(|v| redis::from_redis_value(v).ok())
                            .unwrap_or_default();
                        return Some(Notice::Message(payload));
                    }
                    _ => {}
                }
            },
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(c) => c.req_packed_command(cmd),
            Self::Multiplexed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Multiplexed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_are_seeds_of_a_redis_cluster_only() {
        let seeds = "redis://10.0.0.1:6379, redis://10.0.0.2:6379";
        assert!(Redis::open(seeds, false, None).is_err());
        assert!(matches!(
            Redis::open(seeds, true, None),
            Ok(Redis::Cluster(_))
        ));
        assert!(matches!(
            Redis::open("redis://10.0.0.1:6379", false, None),
            Ok(Redis::Single(_))
        ));
    }

    #[test]
    fn seeds_agree_on_tls() {
        assert!(Redis::open("rediss://10.0.0.1:6379,redis://10.0.0.2:6379", true, None).is_err());
        assert!(Redis::open("rediss://10.0.0.1:6379,rediss://10.0.0.2:6379", true, None).is_ok());
    }
}
