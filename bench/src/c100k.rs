//! `c100k`: 100,000 idle WebSockets on one node (issue 24, item 5).
//!
//! A live room of a few clients is measured alone (its p99 is the
//! baseline), then the idle connections are opened over many rooms, each
//! batch from its own loopback source address (127.0.0.2, 127.0.0.3, …:
//! one address has only the ephemeral port range towards one server
//! port), then the live room is measured again while they are all open.
//! Targets: at most 8 KiB of server RSS per idle connection, at least
//! 5,000 connections opened per second, and the live room's p99 unchanged.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::arrivals::Arrivals;
use crate::conn::ConnectOptions;
use crate::fanout::{self, FanoutConfig, FanoutReport};
use crate::idle::{Held, HeldConfig};
use crate::procstat::{self, FdLimit};
use crate::servers::{Paths, Server, ServerKind};
use crate::stats::MIB;
use crate::wire::Protocol;

mod kernel;

use kernel::{Demand, Kernel, check, tcp_mem_bytes};

/// Most server RSS one idle connection may add.
pub const TARGET_KIB_PER_CONNECTION: f64 = 8.0;
/// Fewest connections per second the opening phase must reach.
pub const TARGET_ACCEPTS_PER_S: f64 = 5_000.0;
/// "Unchanged": the live room's p99 with the idle connections open may be
/// this much above its baseline, relatively or absolutely (the looser):
/// a ~1 ms p99 on a shared 2-core machine moves that much run to run.
pub const P99_TOLERANCE_RATIO: f64 = 1.25;
pub const P99_TOLERANCE_MS: f64 = 1.0;

/// Files a process needs besides the idle connections (listener, database,
/// logs, the live room and its convergence check, the runtime): a few
/// dozen; kept small so that a 20,000 limit still allows 19,700.
const FD_MARGIN: u64 = 256;

/// `crdt-hub-loadgen c100k`.
#[derive(clap::Args)]
pub struct C100kArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 100_000)]
    pub connections: usize,
    /// Rooms they are spread over (connection i joins room i mod ROOMS).
    #[arg(long, default_value_t = 10_000)]
    pub rooms: usize,
    /// Most idle connections from one loopback source address (the
    /// ephemeral port range has ~28k ports per address and server port).
    #[arg(long, default_value_t = 25_000)]
    pub per_address: usize,
    /// The first source address; the next ones count up from it.
    #[arg(long, default_value = "127.0.0.2")]
    pub first_source: std::net::Ipv4Addr,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds per connection attempt.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Seconds every connection stays open, idle, before the second live
    /// run (the idle-CPU window).
    #[arg(long, default_value_t = 10.0)]
    pub idle: f64,
    /// Clients of the live room.
    #[arg(long, default_value_t = 10)]
    pub live_clients: usize,
    /// Updates per second per live client.
    #[arg(long, default_value_t = 10.0)]
    pub live_rate: f64,
    /// Seconds of each live run.
    #[arg(long, default_value_t = 15.0)]
    pub live_duration: f64,
    #[arg(long, value_enum, default_value = "y-websocket")]
    pub protocol: Protocol,
    /// A server already running (loopback only), instead of starting
    /// crdt-hub; needs --server-pid.
    #[arg(long, requires = "server_pid")]
    pub url: Option<String>,
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The crdt-hub binary (default: target/release/crdt-hub of this workspace).
    #[arg(long, env = "CRDT_HUB_BIN")]
    pub crdt_hub: Option<PathBuf>,
    /// Extra argument for `crdt-hub serve`, repeatable.
    #[arg(long = "crdt-hub-arg", allow_hyphen_values = true)]
    pub crdt_hub_args: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct C100kConfig {
    /// Server to load (`None`: start crdt-hub, see `paths`).
    pub url: Option<String>,
    pub server_pid: Option<u32>,
    pub paths: Paths,
    pub protocol: Protocol,
    pub connections: usize,
    pub rooms: usize,
    /// Most idle connections from one source address.
    pub per_address: usize,
    pub first_source: Ipv4Addr,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    /// Seconds all idle connections stay open before the second live run
    /// (the idle CPU window).
    pub idle: Duration,
    pub live_clients: usize,
    /// Updates per second per live client.
    pub live_rate: f64,
    pub live_duration: Duration,
}

/// Loopback source addresses for `connections` connections with at most
/// `per_address` from each: `first`, `first + 1`, … as many as needed,
/// connection `i` taking address `i mod n` (so they fill evenly).
///
/// # Errors
/// `per_address` is 0, or the addresses would leave 127.0.0.0/8.
pub fn source_addresses(
    connections: usize,
    per_address: usize,
    first: Ipv4Addr,
) -> Result<Vec<IpAddr>> {
    if per_address == 0 {
        bail!("--per-address must be positive");
    }
    let count = connections.div_ceil(per_address).max(1);
    let addresses: Vec<IpAddr> = (0..count)
        .map(|k| {
            u32::from(first)
                .checked_add(u32::try_from(k).ok()?)
                .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
        })
        .collect::<Option<_>>()
        .context("source addresses overflow")?;
    if let Some(bad) = addresses
        .iter()
        .find(|a| !a.is_loopback() || a.is_unspecified())
    {
        bail!("{count} source addresses from {first} reach {bad}, outside 127.0.0.0/8");
    }
    Ok((0..connections).map(|i| addresses[i % count]).collect())
}

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct C100kReport {
    pub kernel: Kernel,
    pub fd_limit: FdLimit,
    /// The server's soft open-file limit, from `/proc/PID/limits`.
    pub server_fd_limit: Option<u64>,
    pub connections: usize,
    pub rooms: usize,
    pub source_addresses: usize,
    pub connected: usize,
    pub connect_failures: usize,
    pub connect_errors: Vec<String>,
    pub open_s: f64,
    /// Connections opened (WebSocket up and the server's greeting read)
    /// per second of the opening phase.
    pub accepts_per_s: f64,
    pub server_cpu_open_s: f64,
    /// The generator's own CPU over the opening phase (it shares the cores).
    pub loadgen_cpu_open_s: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub rss_per_connection_kib: f64,
    /// Kernel TCP buffer memory of the whole machine (both ends), from
    /// `/proc/net/sockstat`: not in any RSS.
    pub tcp_mem_before_mib: f64,
    pub tcp_mem_after_mib: f64,
    pub loadgen_rss_mib: f64,
    pub idle_s: f64,
    pub idle_cpu_percent: f64,
    pub closed_by_server: usize,
    pub live_baseline: FanoutReport,
    pub live_during: FanoutReport,
    pub p99_ratio: f64,
    pub targets: Targets,
}

/// Each target: met or not.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Targets {
    pub kib_per_connection: bool,
    pub accepts_per_s: bool,
    pub p99_unchanged: bool,
    /// Every connection opened and stayed open; the live room delivered.
    pub complete: bool,
}

impl Targets {
    fn all(self) -> bool {
        self.kib_per_connection && self.accepts_per_s && self.p99_unchanged && self.complete
    }
}

/// Whether `during` counts as the same p99 as `baseline` (see
/// [`P99_TOLERANCE_RATIO`]).
pub fn p99_unchanged(baseline_ms: f64, during_ms: f64) -> bool {
    during_ms <= (baseline_ms * P99_TOLERANCE_RATIO).max(baseline_ms + P99_TOLERANCE_MS)
}

/// Runs the whole measurement and prints it.
///
/// # Errors
/// Limits that do not allow the run, a server that does not start or
/// vanishes.
pub async fn run(config: C100kConfig, json: bool) -> Result<()> {
    if config.rooms == 0 || config.connections == 0 {
        bail!("--connections and --rooms must be positive");
    }
    if let Some(url) = &config.url {
        crate::conn::loopback_addr(url)?;
    }
    let sources = source_addresses(config.connections, config.per_address, config.first_source)?;
    let addresses = config.connections.div_ceil(config.per_address);
    let kernel = Kernel::read();
    let fds = config.connections as u64 + FD_MARGIN;
    let checks = check(
        &kernel,
        &Demand {
            fds_per_process: fds,
            processes: if config.url.is_some() { 1 } else { 2 },
            per_address: config.connections.div_ceil(addresses) as u64,
            connections: config.connections as u64,
            concurrency: config.connect_concurrency as u64,
        },
    );
    for warning in &checks.warnings {
        eprintln!("warning: {warning}");
    }
    if !checks.fatal.is_empty() {
        bail!(
            "the machine does not allow this run:\n  {}",
            checks.fatal.join("\n  ")
        );
    }
    // Before the server starts: it inherits the limit.
    let fd_limit = procstat::ensure_fd_limit(fds)?;
    if fd_limit.raised_hard {
        eprintln!(
            "raised the hard RLIMIT_NOFILE to {} (privileged); the server started here inherits it",
            fd_limit.hard
        );
    }

    let mut started = None;
    let (base, pid) = match (&config.url, config.server_pid) {
        (Some(url), Some(pid)) => (url.clone(), pid),
        (Some(_), None) => bail!("--url needs --server-pid (RSS and CPU are the point)"),
        (None, _) => {
            let mut paths = config.paths.clone();
            paths.prepare(&[ServerKind::CrdtHub])?;
            // The idle rooms plus the live room's two runs must all load,
            // however few rooms the connections share.
            paths.crdt_hub_env.push((
                "CRDT_HUB_MAX_ROOMS".into(),
                (config.rooms + 16).max(100_000).to_string(),
            ));
            paths.crdt_hub_env.push((
                "CRDT_HUB_MAX_CONNECTIONS_PER_ROOM".into(),
                config
                    .connections
                    .div_ceil(config.rooms)
                    .max(10_000)
                    .to_string(),
            ));
            let kind = match config.protocol {
                Protocol::YWebsocket => ServerKind::CrdtHub,
                Protocol::Hocuspocus => ServerKind::CrdtHubHp,
            };
            let server = Server::start(kind, &paths)?;
            let both = (server.base_url(), server.pid);
            started = Some(server);
            both
        }
    };
    let server_fd_limit = procstat::open_files_limit(pid);
    if let Some(limit) = server_fd_limit
        && limit < fds
    {
        bail!(
            "the server (pid {pid}) may open {limit} files, fewer than the {fds} this run needs: start it with a higher `ulimit -n` (its hard limit, raised by root if need be)"
        );
    }
    eprintln!(
        "c100k: {} idle connections over {} rooms from {addresses} source addresses ({}..), server {base} (pid {pid}), open files {} / {}",
        config.connections,
        config.rooms,
        config.first_source,
        fd_limit.soft,
        server_fd_limit.unwrap_or(0)
    );

    let preflight = Preflight {
        kernel,
        fd_limit,
        server_fd_limit,
        source_addresses: addresses,
    };
    let outcome = measure(&config, &base, pid, &sources, preflight).await;
    if let Some(server) = started {
        if let Err(e) = &outcome {
            eprintln!("server log tail:\n{}", server.log_tail());
            eprintln!("error: {e:#}");
        }
        server.stop();
    }
    let report = outcome?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// What was found before the run, for the report.
struct Preflight {
    kernel: Kernel,
    fd_limit: FdLimit,
    server_fd_limit: Option<u64>,
    source_addresses: usize,
}

async fn measure(
    config: &C100kConfig,
    base: &str,
    pid: u32,
    sources: &[IpAddr],
    preflight: Preflight,
) -> Result<C100kReport> {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    eprintln!("live room alone for {:?} …", config.live_duration);
    let live_baseline = live(config, base, pid, &format!("c100k-{unique}-live-alone")).await?;

    let before = procstat::sample(Some(pid))?;
    let tcp_mem_before = tcp_mem_bytes();
    eprintln!("opening {} idle connections …", config.connections);
    let own_before = procstat::sample(None)?;
    let opening = Instant::now();
    let held = Held::open(&HeldConfig {
        base,
        protocol: config.protocol,
        room_prefix: &format!("c100k-{unique}-idle"),
        connections: config.connections,
        rooms: config.rooms,
        sources: Some(sources),
        connect: ConnectOptions {
            timeout: config.connect_timeout,
            // Idle clients read pings and nothing else.
            read_buffer: 4 * 1024,
            ..ConnectOptions::default()
        },
        connect_concurrency: config.connect_concurrency,
    })
    .await;
    let open_s = opening.elapsed().as_secs_f64();
    let opened = procstat::sample(Some(pid))?;
    let own_opened = procstat::sample(None)?;
    let connected = held.connected();
    eprintln!(
        "opened {connected} in {open_s:.1} s ({} failed{}); idle for {:?} …",
        held.stats.failures,
        held.stats
            .errors
            .first()
            .map_or_else(String::new, |e| format!(", first: {e}")),
        config.idle
    );
    // Let the server finish what joining left behind (room loads, greetings).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = procstat::sample(Some(pid))?;
    tokio::time::sleep(config.idle).await;
    let after = procstat::sample(Some(pid))?;
    let tcp_mem_after = tcp_mem_bytes();
    let loadgen = procstat::sample(None)?;

    eprintln!("live room with the idle connections open …");
    let live_during = live(config, base, pid, &format!("c100k-{unique}-live-during")).await;
    let closed_by_server = held.closed_so_far();
    let stats = held.stats.clone();
    eprintln!("closing the idle connections …");
    held.close().await?;
    let live_during = live_during?;

    let accepts_per_s = connected as f64 / open_s;
    let rss_per_connection_kib =
        after.rss_bytes.saturating_sub(before.rss_bytes) as f64 / 1024.0 / connected.max(1) as f64;
    let idle_cpu = after.cpu.saturating_sub(settled.cpu).as_secs_f64();
    let (p99_before, p99_during) = (live_baseline.latency.p99_ms, live_during.latency.p99_ms);
    let targets = Targets {
        kib_per_connection: rss_per_connection_kib <= TARGET_KIB_PER_CONNECTION,
        accepts_per_s: accepts_per_s >= TARGET_ACCEPTS_PER_S,
        p99_unchanged: p99_unchanged(p99_before, p99_during),
        complete: connected == config.connections
            && closed_by_server == 0
            && live_baseline.delivery_ratio >= 0.99
            && live_during.delivery_ratio >= 0.99,
    };
    Ok(C100kReport {
        kernel: preflight.kernel,
        fd_limit: preflight.fd_limit,
        server_fd_limit: preflight.server_fd_limit,
        connections: config.connections,
        rooms: config.rooms,
        source_addresses: preflight.source_addresses,
        connected,
        connect_failures: stats.failures,
        connect_errors: stats.errors,
        open_s,
        accepts_per_s,
        server_cpu_open_s: opened.cpu.saturating_sub(before.cpu).as_secs_f64(),
        loadgen_cpu_open_s: own_opened.cpu.saturating_sub(own_before.cpu).as_secs_f64(),
        rss_before_mib: before.rss_bytes as f64 / MIB,
        rss_after_mib: after.rss_bytes as f64 / MIB,
        rss_per_connection_kib,
        tcp_mem_before_mib: tcp_mem_before as f64 / MIB,
        tcp_mem_after_mib: tcp_mem_after as f64 / MIB,
        loadgen_rss_mib: loadgen.rss_bytes as f64 / MIB,
        idle_s: config.idle.as_secs_f64(),
        idle_cpu_percent: 100.0 * idle_cpu / config.idle.as_secs_f64(),
        closed_by_server,
        p99_ratio: p99_during / p99_before,
        live_baseline,
        live_during,
        targets,
    })
}

/// One live-room fan-out run.
async fn live(config: &C100kConfig, base: &str, pid: u32, room: &str) -> Result<FanoutReport> {
    fanout::run(&FanoutConfig {
        bases: vec![base.to_owned()],
        protocol: config.protocol,
        clients: config.live_clients,
        rooms: 1,
        rate: config.live_rate,
        arrivals: Arrivals::Even,
        duration: config.live_duration,
        room_prefix: room.to_owned(),
        connect: ConnectOptions::default(),
        connect_concurrency: config.live_clients,
        drain_timeout: Duration::from_secs(10),
        server_pids: vec![pid],
        check_convergence: true,
        gapped_updates: 0,
        preload_bytes: 0,
    })
    .await
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn print_report(r: &C100kReport) {
    let (a, b) = (&r.live_baseline, &r.live_during);
    let rows: Vec<(String, String)> = vec![
        (
            "connections opened".into(),
            format!(
                "{} / {} over {} rooms from {} source addresses",
                r.connected, r.connections, r.rooms, r.source_addresses
            ),
        ),
        ("opening s".into(), format!("{:.2}", r.open_s)),
        (
            "accepted connections/s".into(),
            format!("{:.0}", r.accepts_per_s),
        ),
        (
            "CPU s while opening: server / loadgen".into(),
            format!("{:.2} / {:.2}", r.server_cpu_open_s, r.loadgen_cpu_open_s),
        ),
        (
            "server RSS before / after MiB".into(),
            format!("{:.1} / {:.1}", r.rss_before_mib, r.rss_after_mib),
        ),
        (
            "server RSS KiB per idle connection".into(),
            format!("{:.2}", r.rss_per_connection_kib),
        ),
        (
            "kernel TCP memory before / after MiB".into(),
            format!("{:.1} / {:.1}", r.tcp_mem_before_mib, r.tcp_mem_after_mib),
        ),
        (
            "server idle CPU % of a core".into(),
            format!("{:.2} (over {:.0} s)", r.idle_cpu_percent, r.idle_s),
        ),
        (
            "closed by server while idle".into(),
            r.closed_by_server.to_string(),
        ),
        (
            "loadgen RSS MiB".into(),
            format!("{:.1}", r.loadgen_rss_mib),
        ),
        (
            "live room p50 ms alone / during".into(),
            format!("{:.2} / {:.2}", a.latency.p50_ms, b.latency.p50_ms),
        ),
        (
            "live room p99 ms alone / during".into(),
            format!(
                "{:.2} / {:.2} (× {:.2})",
                a.latency.p99_ms, b.latency.p99_ms, r.p99_ratio
            ),
        ),
        (
            "live room p999 ms alone / during".into(),
            format!("{:.2} / {:.2}", a.latency.p999_ms, b.latency.p999_ms),
        ),
        (
            "live room delivered alone / during".into(),
            format!("{:.4} / {:.4}", a.delivery_ratio, b.delivery_ratio),
        ),
        (
            "live room server CPU s alone / during".into(),
            format!("{:.2} / {:.2}", a.server_cpu_s, b.server_cpu_s),
        ),
        (
            "open files: loadgen / server".into(),
            format!(
                "{} / {}",
                r.fd_limit.soft,
                r.server_fd_limit
                    .map_or_else(|| "?".into(), |l| l.to_string())
            ),
        ),
    ];
    println!("| c100k | value |\n|---|---|");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
    let t = r.targets;
    println!();
    println!(
        "target ≤ {TARGET_KIB_PER_CONNECTION} KiB per idle connection: {}",
        met(t.kib_per_connection)
    );
    println!(
        "target ≥ {TARGET_ACCEPTS_PER_S} accepted connections/s: {}",
        met(t.accepts_per_s)
    );
    println!(
        "target live p99 unchanged (≤ max(× {P99_TOLERANCE_RATIO}, + {P99_TOLERANCE_MS} ms)): {}",
        met(t.p99_unchanged)
    );
    println!(
        "every connection opened and held, live room ≥ 99 % delivered: {}",
        met(t.complete)
    );
    println!("all targets: {}", met(t.all()));
    if !a.convergence_errors.is_empty() || !b.convergence_errors.is_empty() {
        println!(
            "live room convergence: {:?} / {:?}",
            a.convergence_errors, b.convergence_errors
        );
    }
}

/// The crdt-hub binary the harness starts by default.
pub fn default_paths(binary: Option<PathBuf>, args: Vec<String>) -> Paths {
    let mut paths = Paths::from_workspace();
    if let Some(binary) = binary {
        paths.crdt_hub = binary;
    }
    paths.crdt_hub_args = args;
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_fill_evenly_and_stay_under_the_cap() {
        let first = Ipv4Addr::new(127, 0, 0, 2);
        let sources = source_addresses(100_000, 25_000, first).unwrap();
        assert_eq!(sources.len(), 100_000);
        let mut counts = std::collections::BTreeMap::new();
        for s in &sources {
            *counts.entry(*s).or_insert(0) += 1;
        }
        let expected: Vec<IpAddr> = (2..=5)
            .map(|d| Ipv4Addr::new(127, 0, 0, d).into())
            .collect();
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
        assert!(counts.values().all(|&c| c == 25_000));
        // 100,001 needs a fifth address; none takes more than the cap.
        let sources = source_addresses(100_001, 25_000, first).unwrap();
        let fifth: IpAddr = Ipv4Addr::new(127, 0, 0, 6).into();
        assert_eq!(sources[4], fifth);
        assert!(sources.iter().filter(|&&s| s == fifth).count() <= 25_000);
    }

    #[test]
    fn sources_cross_octets_but_not_loopback() {
        let sources = source_addresses(3, 1, Ipv4Addr::new(127, 0, 0, 255)).unwrap();
        assert_eq!(sources[2], IpAddr::from(Ipv4Addr::new(127, 0, 1, 1)));
        assert!(source_addresses(3, 1, Ipv4Addr::new(127, 255, 255, 254)).is_err());
        assert!(source_addresses(1, 1, Ipv4Addr::new(10, 0, 0, 1)).is_err());
        assert!(source_addresses(1, 0, Ipv4Addr::new(127, 0, 0, 2)).is_err());
        assert!(
            source_addresses(0, 5, Ipv4Addr::new(127, 0, 0, 2))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn p99_tolerance() {
        assert!(p99_unchanged(1.0, 1.9)); // + 1 ms is looser at 1 ms
        assert!(!p99_unchanged(1.0, 2.1));
        assert!(p99_unchanged(10.0, 12.4)); // × 1.25 is looser at 10 ms
        assert!(!p99_unchanged(10.0, 12.6));
    }
}
