//! The `serve` flags of cluster mode.

use std::time::Duration;

use clap::Args;

use super::ClusterConfig;
use crate::units::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Join a cluster through this Redis (redis://HOST:PORT[/DB], or
    /// rediss:// for TLS): rooms share updates and awareness with every
    /// other node using the same Redis and prefix. Without it the node
    /// runs standalone. With --redis-cluster: one or more seed nodes of a
    /// Redis Cluster, comma-separated.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// --redis-url names nodes of a Redis Cluster (cluster mode enabled):
    /// the rest of the cluster is discovered from them, and each room's
    /// keys go to the master of the room's slot.
    #[arg(long, env = "CRDT_HUB_REDIS_CLUSTER", requires = "redis_url")]
    pub redis_cluster: bool,

    /// With a rediss:// URL: trust the CA certificates in this PEM file
    /// (a private CA) instead of the system's roots.
    #[arg(long, env = "CRDT_HUB_REDIS_CA_FILE", requires = "redis_url")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Prefix of the Redis keys (streams, leases): nodes of one cluster use
    /// the same prefix; different prefixes isolate clusters on one Redis.
    /// No braces: the room's name in braces is the keys' hash tag.
    #[arg(long, env = "CRDT_HUB_REDIS_PREFIX", default_value = "crdt-hub", value_parser = parse_prefix)]
    pub redis_prefix: String,

    /// How often each room publishes its state vector so that nodes that
    /// missed bus messages catch up (anti-entropy, while another node holds
    /// the room), and renews its interest claim and compaction lease. A
    /// room's Redis keys expire five intervals after their last renewal.
    #[arg(long, env = "CRDT_HUB_CLUSTER_SYNC_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub cluster_sync_interval: Duration,

    /// Awareness states of clients on other nodes that are not renewed for
    /// this long are removed (their node died).
    #[arg(long, env = "CRDT_HUB_CLUSTER_AWARENESS_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub cluster_awareness_timeout: Duration,

    /// Entries kept per room stream (approximately; `XADD … MAXLEN ~`).
    #[arg(long, env = "CRDT_HUB_REDIS_STREAM_MAXLEN", default_value = "10000")]
    pub redis_stream_maxlen: usize,
}

/// A brace in the prefix would make it (or part of it) the keys' Redis
/// Cluster hash tag instead of the room's name.
fn parse_prefix(prefix: &str) -> Result<String, String> {
    if prefix.contains(['{', '}']) {
        return Err("the Redis key prefix may not contain braces".into());
    }
    Ok(prefix.to_string())
}

impl ClusterArgs {
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            prefix: self.redis_prefix.clone(),
            sync_interval: self.cluster_sync_interval.max(Duration::from_millis(50)),
            awareness_timeout: self.cluster_awareness_timeout.max(Duration::from_secs(1)),
            stream_maxlen: self.redis_stream_maxlen.max(100),
            ..ClusterConfig::default()
        }
    }
}
