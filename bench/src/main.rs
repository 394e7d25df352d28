//! `crdt-hub-loadgen`: load generator and comparison harness for Yjs sync
//! servers (issue 9). See BENCHMARKS.md at the repository root.

mod arrivals;
mod c100k;
mod cluster;
mod compare;
mod conn;
mod converge;
mod fanout;
mod gapped;
mod idle;
mod ingest;
mod join_storm;
mod presence;
mod procstat;
mod servers;
mod soak;
mod stamp;
mod stats;
mod wire;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::arrivals::Arrivals;
use crate::cluster::ClusterOptions;
use crate::compare::{CompareOptions, Config};
use crate::conn::ConnectOptions;
use crate::fanout::FanoutConfig;
use crate::servers::ServerKind;
use crate::soak::SoakOptions;
use crate::wire::Protocol;

#[derive(Parser)]
#[command(
    name = "crdt-hub-loadgen",
    about = "Load generator and comparison harness for Yjs sync servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One fan-out run against a server that is already running (loopback only).
    Run(RunArgs),
    /// Start each server fresh per run and compare them on every configuration.
    Compare(CompareArgs),
    /// Fan-out with each room's clients split over 1, 2 and 3 crdt-hub
    /// nodes joined through Redis, against one node without Redis.
    Cluster(ClusterArgs),
    /// Mixed load for a long time (fan-out, churn, rooms unloading and
    /// reopening, API reads), sampling the server's RSS, descriptors and
    /// CPU; fails on RSS or descriptor growth or a room that did not
    /// converge (issue 24). Not part of CI: 30 min by default.
    Soak(SoakArgs),
    /// 100,000 idle WebSockets on one node: RSS per connection, accepted
    /// connections/s, and a live room's p99 alone and while they are open
    /// (issue 24, item 5). Starts crdt-hub unless --url is given.
    C100k(c100k::C100kArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Server to load, e.g. ws://127.0.0.1:1234 (must be a loopback
    /// address). Repeat it (or give a comma list) for the nodes of a
    /// cluster: each room's clients are spread over them round-robin.
    #[arg(long, required = true, value_delimiter = ',')]
    url: Vec<String>,
    #[arg(long, value_enum, default_value = "y-websocket")]
    protocol: Protocol,
    #[arg(long, default_value_t = 200)]
    clients: usize,
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Updates per second per client.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How each client spaces its sends: an even beat, or a Poisson
    /// process with the same mean rate.
    #[arg(long, value_enum, default_value = "even")]
    arrivals: Arrivals,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The server's process id, for CPU time and RSS; repeat it (or give a
    /// comma list) for every node of a cluster: their numbers are summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Room names are PREFIX-0, PREFIX-1, …; default: unique per run.
    #[arg(long)]
    room_prefix: Option<String>,
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds per connection attempt.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Skip the after-run convergence check.
    #[arg(long)]
    no_convergence: bool,
    /// A writer in room 0 sends this many updates whose first part never
    /// arrives, spread over the run, beside the honest load.
    #[arg(long, default_value_t = 0)]
    gapped_updates: usize,
    /// Move cursors instead of typing: each client sends RATE awareness
    /// updates per second (a presence storm; see bench/src/presence.rs).
    #[arg(long)]
    presence: bool,
    /// With --presence: each client sends back every awareness message it
    /// receives, as y-websocket and Hocuspocus providers before v4 do.
    #[arg(long, requires = "presence")]
    echo: bool,
    /// Give each room a document of about this many bytes before the
    /// clients join (a hot room); 0 starts them empty.
    #[arg(long, default_value_t = 0)]
    preload_bytes: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Reduced set for smoke checks: short runs, one round, smaller sizes.
    #[arg(long)]
    quick: bool,
    /// Rounds per configuration (default 3, or 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// How each fan-out client spaces its sends (fan-out, saturation, big
    /// room): an even beat, or a Poisson process with the same mean rate.
    #[arg(long, value_enum, default_value = "even")]
    arrivals: Arrivals,
    /// The protocol crdt-hub is driven over, which picks the default
    /// servers and configurations: y-websocket → crdt-hub, y-websocket,
    /// hocuspocus (3.x), every configuration; hocuspocus → crdt-hub-hp
    /// (crdt-hub at `/`), hocuspocus (3.x), hocuspocus4, the fan-out
    /// configurations (fanout, saturation, big-room).
    #[arg(long, value_enum, default_value = "y-websocket")]
    protocol: Protocol,
    /// Servers to compare, each driven over its own protocol (default: by
    /// --protocol).
    #[arg(long, value_enum, value_delimiter = ',')]
    servers: Option<Vec<ServerKind>>,
    /// Configurations to run, in this order (default: by --protocol).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Option<Vec<Config>>,
    /// The crdt-hub binary to compare (default: target/release/crdt-hub of this workspace).
    #[arg(long, env = "CRDT_HUB_BIN")]
    crdt_hub: Option<PathBuf>,
    /// Extra argument for `crdt-hub serve`, repeatable, e.g.
    /// `--crdt-hub-arg=--rate-connections-per-ip=100000`.
    #[arg(long = "crdt-hub-arg", allow_hyphen_values = true)]
    crdt_hub_args: Vec<String>,
    /// The B4 editing trace.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/automerge-paper.json.gz"))]
    trace: PathBuf,
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// Smoke check: 3 s runs, one round.
    #[arg(long)]
    quick: bool,
    /// Rounds, every setup once per round (default 3, or 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// The crdt-hub binary (default: target/release/crdt-hub of this workspace).
    #[arg(long, env = "CRDT_HUB_BIN")]
    crdt_hub: Option<PathBuf>,
    /// Extra argument for every node's `crdt-hub serve`, repeatable.
    #[arg(long = "crdt-hub-arg", allow_hyphen_values = true)]
    crdt_hub_args: Vec<String>,
    /// Any database of the Postgres server; each run creates (and drops)
    /// a fresh database next to it, shared by that run's nodes.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// The Redis the nodes join through; each run uses its own key prefix
    /// and deletes its keys afterwards.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[derive(clap::Args)]
struct SoakArgs {
    /// How long the load runs, warm-up included: `30m`, `90s`, `180`.
    #[arg(long, default_value = "30m", value_parser = soak::parse_duration)]
    duration: Duration,
    /// Load before the baselines are taken (default: a fifth of
    /// --duration, at most 5 min).
    #[arg(long, value_parser = soak::parse_duration)]
    warmup: Option<Duration>,
    /// How often the server is sampled.
    #[arg(long, default_value = "10s", value_parser = soak::parse_duration)]
    sample_interval: Duration,
    /// A running crdt-hub to soak instead of starting one, e.g.
    /// ws://127.0.0.1:1234 (loopback only; needs --server-pid, and should
    /// serve nobody else: the quiet points wait for 0 connections and rooms).
    #[arg(long, requires = "server_pid")]
    url: Option<String>,
    /// The process id of the server at --url.
    #[arg(long, requires = "url")]
    server_pid: Option<u32>,
    /// Given to the server the soak starts; with --url, set it to the
    /// server's `--room-idle-timeout`.
    #[arg(long, default_value = "5s", value_parser = soak::parse_duration)]
    room_idle_timeout: Duration,
    #[arg(long, default_value_t = 60)]
    fanout_clients: usize,
    #[arg(long, default_value_t = 6)]
    fanout_rooms: usize,
    /// Updates per second per fan-out client.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    #[arg(long, value_enum, default_value = "even")]
    arrivals: Arrivals,
    /// Length of one fan-out round; every round uses fresh rooms.
    #[arg(long, default_value = "60s", value_parser = soak::parse_duration)]
    fanout_round: Duration,
    /// Churn rooms open at a time.
    #[arg(long, default_value_t = 24)]
    churn_rooms: usize,
    /// Visits a churn room gets before a fresh room takes its place, so
    /// that the documents loaded stay the same size on average (each visit
    /// adds a client's text); 0 keeps the same rooms for the whole run,
    /// and then their growth shows in RSS.
    #[arg(long, default_value_t = 20)]
    churn_visits_per_room: u32,
    /// Churn clients' workers; each owns every N-th churn room.
    #[arg(long, default_value_t = 4)]
    churn_workers: usize,
    /// Time between two REST API reads.
    #[arg(long, default_value = "500ms", value_parser = soak::parse_duration)]
    api_interval: Duration,
    /// Allowed RSS growth under load, in percent of the level after warm-up.
    #[arg(long, default_value_t = 5.0)]
    rss_tolerance: f64,
    /// Samples in the windows whose highest RSS is compared.
    #[arg(long, default_value_t = 6)]
    rss_window: usize,
    /// File descriptors the server may hold at the end's quiet point beyond
    /// the one after warm-up.
    #[arg(long, default_value_t = 0)]
    fd_slack: u64,
    /// The crdt-hub binary (default: target/release/crdt-hub of this workspace).
    #[arg(long, env = "CRDT_HUB_BIN")]
    crdt_hub: Option<PathBuf>,
    /// Extra argument for `crdt-hub serve`, repeatable.
    #[arg(long = "crdt-hub-arg", allow_hyphen_values = true)]
    crdt_hub_args: Vec<String>,
    /// Print the report as JSON (the running table goes to stderr).
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    stamp::epoch();
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Compare(args) => {
            compare::run(CompareOptions {
                quick: args.quick,
                protocol: args.protocol,
                rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
                servers: args
                    .servers
                    .unwrap_or_else(|| compare::default_servers(args.protocol)),
                configs: args.only.unwrap_or_else(|| Config::defaults(args.protocol)),
                trace: args.trace,
                crdt_hub: args.crdt_hub,
                crdt_hub_args: args.crdt_hub_args,
                arrivals: args.arrivals,
            })
            .await
        }
        Command::Cluster(args) => {
            cluster::run(ClusterOptions {
                quick: args.quick,
                rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
                crdt_hub: args.crdt_hub,
                crdt_hub_args: args.crdt_hub_args,
                postgres: args.postgres_url,
                redis: args.redis_url,
            })
            .await
        }
        Command::C100k(args) => {
            c100k::run(
                c100k::C100kConfig {
                    url: args.url,
                    server_pid: args.server_pid,
                    paths: c100k::default_paths(args.crdt_hub, args.crdt_hub_args),
                    protocol: args.protocol,
                    connections: args.connections,
                    rooms: args.rooms,
                    per_address: args.per_address,
                    first_source: args.first_source,
                    connect_concurrency: args.connect_concurrency,
                    connect_timeout: Duration::from_secs_f64(args.connect_timeout),
                    idle: Duration::from_secs_f64(args.idle),
                    live_clients: args.live_clients,
                    live_rate: args.live_rate,
                    live_duration: Duration::from_secs_f64(args.live_duration),
                },
                args.json,
            )
            .await
        }
        Command::Soak(args) => {
            if args.churn_rooms == 0 || args.churn_workers == 0 {
                anyhow::bail!("--churn-rooms and --churn-workers must be positive");
            }
            soak::run(SoakOptions {
                duration: args.duration,
                warmup: args.warmup,
                sample_interval: args.sample_interval,
                target: args.url.zip(args.server_pid),
                room_idle_timeout: args.room_idle_timeout,
                fanout_clients: args.fanout_clients,
                fanout_rooms: args.fanout_rooms,
                rate: args.rate,
                arrivals: args.arrivals,
                fanout_round: args.fanout_round,
                churn_rooms: args.churn_rooms,
                churn_visits_per_room: args.churn_visits_per_room,
                churn_workers: args.churn_workers.min(args.churn_rooms),
                api_interval: args.api_interval,
                limits: soak::Limits {
                    rss_tolerance: args.rss_tolerance / 100.0,
                    window: args.rss_window,
                    fd_slack: args.fd_slack,
                },
                crdt_hub: args.crdt_hub,
                crdt_hub_args: args.crdt_hub_args,
                json: args.json,
            })
            .await
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    for url in &args.url {
        conn::loopback_addr(url)?;
    }
    procstat::raise_fd_limit();
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let config = FanoutConfig {
        bases: args.url,
        protocol: args.protocol,
        clients: args.clients,
        rooms: args.rooms,
        rate: args.rate,
        arrivals: args.arrivals,
        duration: Duration::from_secs_f64(args.duration),
        room_prefix: args
            .room_prefix
            .unwrap_or_else(|| format!("bench-{unique}")),
        connect: ConnectOptions {
            timeout: Duration::from_secs_f64(args.connect_timeout),
            ..ConnectOptions::default()
        },
        connect_concurrency: args.connect_concurrency,
        drain_timeout: Duration::from_secs(10),
        server_pids: args.server_pid,
        check_convergence: !args.no_convergence,
        gapped_updates: args.gapped_updates,
        preload_bytes: args.preload_bytes,
    };
    if args.presence {
        return run_presence(&config, args.echo, args.json).await;
    }
    let report = fanout::run(&config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for m in report.metrics() {
        println!("{:<34} {}", m.name, m.value);
    }
    println!(
        "{:<34} {} / {} (failures {}) in {:.2} s {:?}",
        "connected",
        report.connected,
        report.clients,
        report.connect_failures,
        report.connect_s,
        report.connect_errors
    );
    println!(
        "{:<34} sent {} expected {} received {} echoes {} duplicates {}",
        "counts", report.sent, report.expected, report.received, report.echoes, report.duplicates
    );
    if !report.close_reasons.is_empty() {
        println!("{:<34} {:?}", "closes", report.close_reasons);
    }
    if !report.convergence_errors.is_empty() {
        println!("{:<34} {:?}", "convergence", report.convergence_errors);
    }
    Ok(())
}

/// `run --presence`: the same clients, rooms and schedule, moving cursors.
async fn run_presence(fanout: &FanoutConfig, echo: bool, json: bool) -> Result<()> {
    let [base] = fanout.bases.as_slice() else {
        anyhow::bail!("--presence runs against one server");
    };
    let report = presence::run(&presence::PresenceConfig {
        base: base.clone(),
        protocol: fanout.protocol,
        clients: fanout.clients,
        rooms: fanout.rooms,
        rate: fanout.rate,
        arrivals: fanout.arrivals,
        duration: fanout.duration,
        room_prefix: fanout.room_prefix.clone(),
        connect: fanout.connect,
        connect_concurrency: fanout.connect_concurrency,
        drain_timeout: fanout.drain_timeout,
        server_pid: fanout.server_pids.first().copied(),
        echo,
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for m in report.metrics() {
        println!("{:<34} {}", m.name, m.value);
    }
    println!(
        "{:<34} {} / {} (failures {}) {:?}",
        "connected",
        report.connected,
        report.clients,
        report.connect_failures,
        report.connect_errors
    );
    println!(
        "{:<34} moves {} offered {} received {} messages {} echoes {}",
        "counts", report.moves, report.offered, report.delivered, report.messages, report.echoes
    );
    if !report.close_reasons.is_empty() {
        println!("{:<34} {:?}", "closes", report.close_reasons);
    }
    Ok(())
}
