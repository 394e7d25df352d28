//! Many idle connections: memory per connection and the CPU a server burns
//! while nobody types.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::conn::{self, ConnectOptions};
use crate::procstat;
use crate::stats::{MIB, Metric, metric};
use crate::wire::{Protocol, Wire};

#[derive(Debug, Clone)]
pub struct IdleConfig {
    pub base: String,
    pub protocol: Protocol,
    pub connections: usize,
    pub rooms: usize,
    pub idle: Duration,
    pub room_prefix: String,
    pub connect: ConnectOptions,
    pub connect_concurrency: usize,
    pub server_pid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub connections: usize,
    pub rooms: usize,
    pub connected: usize,
    pub connect_failures: usize,
    pub connect_errors: Vec<String>,
    pub connect_s: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub rss_per_connection_kib: f64,
    pub idle_s: f64,
    pub idle_cpu_s: f64,
    /// Idle CPU as a share of one core.
    pub idle_cpu_percent: f64,
    pub closed_while_idle: usize,
}

impl IdleReport {
    pub fn metrics(&self) -> Vec<Metric> {
        vec![
            metric("connected", self.connected as f64),
            metric("connect s", self.connect_s),
            metric("RSS before MiB", self.rss_before_mib),
            metric("RSS connected MiB", self.rss_after_mib),
            metric("RSS KiB/connection", self.rss_per_connection_kib),
            metric("idle CPU % of a core", self.idle_cpu_percent),
            metric("closed while idle", self.closed_while_idle as f64),
        ]
    }
}

/// Opens the connections, lets them sit, measures.
///
/// # Errors
/// The server process vanished.
pub async fn run(config: &IdleConfig) -> Result<IdleReport> {
    let before = procstat::sample(Some(config.server_pid))?;
    let held = Held::open(&HeldConfig {
        base: &config.base,
        protocol: config.protocol,
        room_prefix: &config.room_prefix,
        connections: config.connections,
        rooms: config.rooms,
        sources: None,
        connect: config.connect,
        connect_concurrency: config.connect_concurrency,
    })
    .await;
    let connected = held.connected();
    // Let the server finish whatever joining left behind (room loads, greetings).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = procstat::sample(Some(config.server_pid))?;
    tokio::time::sleep(config.idle).await;
    let after = procstat::sample(Some(config.server_pid))?;
    let opened = held.stats.clone();
    let closed_while_idle = held.close().await?;
    let idle_cpu = after.cpu.saturating_sub(settled.cpu).as_secs_f64();
    let grown = after.rss_bytes.saturating_sub(before.rss_bytes) as f64;
    Ok(IdleReport {
        connections: config.connections,
        rooms: config.rooms,
        connected,
        connect_failures: opened.failures,
        connect_errors: opened.errors,
        connect_s: opened.elapsed.as_secs_f64(),
        rss_before_mib: before.rss_bytes as f64 / MIB,
        rss_after_mib: after.rss_bytes as f64 / MIB,
        rss_per_connection_kib: grown / 1024.0 / connected.max(1) as f64,
        idle_s: config.idle.as_secs_f64(),
        idle_cpu_s: idle_cpu,
        idle_cpu_percent: 100.0 * idle_cpu / config.idle.as_secs_f64(),
        closed_while_idle,
    })
}

/// What [`Held::open`] opens.
pub struct HeldConfig<'a> {
    pub base: &'a str,
    pub protocol: Protocol,
    /// Rooms are `{room_prefix}-0` … `{room_prefix}-{rooms - 1}`;
    /// connection `i` joins room `i % rooms`.
    pub room_prefix: &'a str,
    pub connections: usize,
    pub rooms: usize,
    /// Connection `i` connects from `sources[i]`; `None`: the OS picks.
    pub sources: Option<&'a [IpAddr]>,
    pub connect: ConnectOptions,
    pub connect_concurrency: usize,
}

/// How opening went.
#[derive(Debug, Clone)]
pub struct OpenStats {
    pub failures: usize,
    /// The first few failure messages.
    pub errors: Vec<String>,
    /// Wall time from the first connect to the last connection done.
    pub elapsed: Duration,
}

/// Idle connections held open, each by a task that answers pings, until
/// [`Held::close`].
pub struct Held {
    readers: Vec<JoinHandle<bool>>,
    stop: watch::Sender<bool>,
    pub stats: OpenStats,
}

impl Held {
    /// Opens the connections (failures are counted, not fatal).
    pub async fn open(config: &HeldConfig<'_>) -> Self {
        let wires = Wire::for_rooms(config.protocol, config.room_prefix, config.rooms);
        let per_connection: Vec<Arc<Wire>> = (0..config.connections)
            .map(|i| wires[i % config.rooms].clone())
            .collect();
        let opened = match config.sources {
            Some(sources) => {
                conn::connect_many_from(
                    config.base,
                    &per_connection,
                    sources,
                    config.connect_concurrency,
                    config.connect,
                )
                .await
            }
            None => {
                conn::connect_many(
                    config.base,
                    &per_connection,
                    config.connect_concurrency,
                    config.connect,
                )
                .await
            }
        };
        let (stop, stop_rx) = watch::channel(false);
        let readers = opened
            .sockets
            .into_iter()
            .flatten()
            .map(|ws| tokio::spawn(hold(ws, stop_rx.clone())))
            .collect();
        Self {
            readers,
            stop,
            stats: OpenStats {
                failures: opened.failures,
                errors: opened.errors,
                elapsed: opened.elapsed,
            },
        }
    }

    /// Connections open (those that connected, closed since or not).
    pub fn connected(&self) -> usize {
        self.readers.len()
    }

    /// Connections the server has closed so far.
    pub fn closed_so_far(&self) -> usize {
        self.readers.iter().filter(|r| r.is_finished()).count()
    }

    /// Drops every connection; returns how many the server had closed
    /// before.
    ///
    /// # Errors
    /// A holding task panicked.
    pub async fn close(self) -> Result<usize> {
        self.stop.send(true).ok();
        let mut closed_by_server = 0;
        for reader in self.readers {
            if reader.await? {
                closed_by_server += 1;
            }
        }
        Ok(closed_by_server)
    }
}

/// Keeps one connection open, answering pings (tungstenite does that while
/// reading). Returns whether the server closed it before `stop`.
async fn hold(ws: conn::Ws, mut stop: watch::Receiver<bool>) -> bool {
    let (_sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return false,
            message = stream.next() => match message {
                Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return true,
                Some(Ok(_)) => {}
            },
        }
    }
}
