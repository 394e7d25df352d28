//! `compare`: every configuration against every server, servers started
//! fresh per run and alternated (A B C A B C …) so that slow drifts of a
//! noisy machine hit them alike; tables of medians and of crdt-hub/peer
//! ratios (the median of the per-round ratios, each taken between runs
//! minutes apart rather than across the whole session).

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::conn::ConnectOptions;
use crate::fanout::{self, FanoutConfig};
use crate::idle::{self, IdleConfig};
use crate::ingest::{self, IngestConfig, Trace};
use crate::join_storm::{self, StormConfig};
use crate::procstat;
use crate::servers::{self, Paths, Server, ServerKind};
use crate::stats::{Metric, median};

/// The configurations `compare` knows, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Config {
    /// 200 clients in 20 rooms at 10, 25 and 50 updates/s each.
    Fanout,
    /// Raise the fan-out rate until p99 > 50 ms or delivery < 99 %.
    Saturation,
    /// 500 clients in one room, 2 updates/s each.
    BigRoom,
    /// 10,000 idle connections over 1,000 rooms.
    Idle,
    /// 1,000 clients join a room holding a 5 MB document within 1 s.
    JoinStorm,
    /// The B4 trace through one sender to 10 observers.
    B4,
}

#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub quick: bool,
    pub rounds: usize,
    pub servers: Vec<ServerKind>,
    pub configs: Vec<Config>,
    pub trace: PathBuf,
    pub crdt_hub: Option<PathBuf>,
    pub crdt_hub_args: Vec<String>,
}

/// Sizes and durations of one `compare`.
struct Plan {
    fanout_rates: Vec<f64>,
    fanout_duration: Duration,
    /// Rates tried above the fixed ones, in order, until one fails.
    saturation_ladder: Vec<f64>,
    saturation_duration: Duration,
    big_room_clients: usize,
    big_room_duration: Duration,
    idle_connections: usize,
    idle_rooms: usize,
    idle_window: Duration,
    storm_joiners: usize,
    storm_bytes: usize,
    b4_limit: Option<usize>,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            return Self {
                fanout_rates: vec![10.0, 50.0],
                fanout_duration: Duration::from_secs(3),
                saturation_ladder: vec![100.0, 200.0],
                saturation_duration: Duration::from_secs(3),
                big_room_clients: 200,
                big_room_duration: Duration::from_secs(3),
                idle_connections: 2_000,
                idle_rooms: 200,
                idle_window: Duration::from_secs(3),
                storm_joiners: 200,
                storm_bytes: 1 << 20,
                b4_limit: Some(30_000),
            };
        }
        Self {
            fanout_rates: vec![10.0, 25.0, 50.0],
            fanout_duration: Duration::from_secs(10),
            saturation_ladder: vec![75.0, 100.0, 150.0, 200.0, 300.0, 400.0, 600.0],
            saturation_duration: Duration::from_secs(8),
            big_room_clients: 500,
            big_room_duration: Duration::from_secs(10),
            idle_connections: 10_000,
            idle_rooms: 1_000,
            idle_window: Duration::from_secs(10),
            storm_joiners: 1_000,
            storm_bytes: 5_000_000,
            b4_limit: None,
        }
    }
}

/// What one measurement gave: numbers for the table, the full report for
/// the JSON log.
struct Measured {
    metrics: Vec<Metric>,
    report: serde_json::Value,
}

/// The server a measurement runs against.
#[derive(Clone)]
struct Target {
    base: String,
    kind: ServerKind,
    pid: u32,
}

type Measure<'a> = dyn Fn(Target) -> Pin<Box<dyn Future<Output = Result<Measured>> + 'a>> + 'a;

/// Results of one configuration: `runs[round][server]`.
struct Results {
    title: String,
    servers: Vec<ServerKind>,
    runs: Vec<Vec<Option<Measured>>>,
    notes: Vec<String>,
}

struct Harness {
    paths: Paths,
    servers: Vec<ServerKind>,
    log: std::fs::File,
    markdown: String,
    markdown_path: PathBuf,
}

/// Runs the comparison and prints a table per configuration.
///
/// # Errors
/// A missing crdt-hub binary, a failed `npm ci`, or an unreadable trace.
pub async fn run(options: CompareOptions) -> Result<()> {
    let mut paths = Paths::from_workspace();
    if let Some(binary) = options.crdt_hub.clone() {
        paths.crdt_hub = binary;
    }
    paths.crdt_hub_args = options.crdt_hub_args.clone();
    paths.prepare(&options.servers)?;
    let plan = Plan::new(options.quick);
    let fd_limit = procstat::raise_fd_limit();
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let out_dir = std::fs::canonicalize(&out_dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let log_path = out_dir.join(format!("compare-{stamp}.jsonl"));
    let mut harness = Harness {
        servers: options.servers.clone(),
        log: std::fs::File::create(&log_path)?,
        markdown: String::new(),
        markdown_path: out_dir.join(format!("compare-{stamp}.md")),
        paths,
    };
    harness.say(&format!(
        "# compare{}: {} round(s), servers {}; crdt-hub binary {} {}; open-file limit {fd_limit}; node {}; @y/websocket-server {}, @hocuspocus/server {}, yjs {}\n",
        if options.quick { " --quick" } else { "" },
        options.rounds,
        options.servers.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        harness.paths.crdt_hub.display(),
        harness.paths.crdt_hub_args.join(" "),
        servers::node_version(),
        servers::package_version(&harness.paths.peers, "@y/websocket-server"),
        servers::package_version(&harness.paths.peers, "@hocuspocus/server"),
        servers::package_version(&harness.paths.peers, "yjs"),
    ));
    eprintln!("raw results: {}", log_path.display());

    let mut fixed_rates = Vec::new();
    for config in &options.configs {
        match config {
            Config::Fanout => {
                for &rate in &plan.fanout_rates {
                    let results = harness
                        .measure(
                            &format!("fan-out: 200 clients, 20 rooms, {rate} updates/s each"),
                            options.rounds,
                            &|t| Box::pin(fanout_run(t, 200, 20, rate, plan.fanout_duration)),
                        )
                        .await;
                    fixed_rates.push((rate, results));
                }
            }
            Config::Saturation => harness.saturation(&plan, &fixed_rates).await,
            Config::BigRoom => {
                let clients = plan.big_room_clients;
                harness
                    .measure(
                        &format!("one big room: {clients} clients, 2 updates/s each"),
                        options.rounds,
                        &|t| Box::pin(fanout_run(t, clients, 1, 2.0, plan.big_room_duration)),
                    )
                    .await;
            }
            Config::Idle => {
                let connections = plan
                    .idle_connections
                    .min((fd_limit as usize).saturating_sub(500));
                let rooms = plan.idle_rooms;
                let window = plan.idle_window;
                harness
                    .measure(
                        &format!(
                            "idle: {connections} connections over {rooms} rooms, {}s idle",
                            window.as_secs()
                        ),
                        options.rounds,
                        &|t| Box::pin(idle_run(t, connections, rooms, window)),
                    )
                    .await;
            }
            Config::JoinStorm => {
                let (joiners, bytes) = (plan.storm_joiners, plan.storm_bytes);
                harness
                    .measure(
                        &format!(
                            "join storm: {joiners} clients join a {bytes}-byte document within 1 s"
                        ),
                        options.rounds,
                        &|t| Box::pin(storm_run(t, joiners, bytes)),
                    )
                    .await;
            }
            Config::B4 => {
                let trace = ingest::load_trace(&options.trace, plan.b4_limit)?;
                let baseline = ingest::baseline(&trace, 3)?;
                harness.say(&format!(
                    "## B4 in-process baseline\n\nyrs applying the {} per-keystroke updates to one doc (decode + apply, one transaction each): median of {} runs {:.3} s = **{:.2} µs/update** ({:.0} updates/s).\n",
                    baseline.updates,
                    baseline.runs,
                    baseline.median_s,
                    baseline.us_per_update,
                    1e6 / baseline.us_per_update
                ));
                harness.log_json(json!({"config": "b4-baseline", "report": baseline}));
                let trace = &trace;
                harness
                    .measure(
                        &format!(
                            "B4 ingest: {} updates, 1 sender, 10 observers",
                            trace.updates.len()
                        ),
                        options.rounds,
                        &|t| Box::pin(ingest_run(t, trace)),
                    )
                    .await;
            }
        }
    }
    eprintln!("tables also in {}", harness.markdown_path.display());
    Ok(())
}

async fn fanout_run(
    target: Target,
    clients: usize,
    rooms: usize,
    rate: f64,
    duration: Duration,
) -> Result<Measured> {
    let report = fanout::run(&fanout_config(&target, clients, rooms, rate, duration)).await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

fn fanout_config(
    target: &Target,
    clients: usize,
    rooms: usize,
    rate: f64,
    duration: Duration,
) -> FanoutConfig {
    FanoutConfig {
        bases: vec![target.base.clone()],
        protocol: target.kind.protocol(),
        clients,
        rooms,
        rate,
        duration,
        room_prefix: "fanout".into(),
        connect: ConnectOptions::default(),
        connect_concurrency: 64,
        drain_timeout: Duration::from_secs(10),
        server_pids: vec![target.pid],
        check_convergence: true,
        gapped_updates: 0,
    }
}

async fn idle_run(
    target: Target,
    connections: usize,
    rooms: usize,
    idle: Duration,
) -> Result<Measured> {
    let report = idle::run(&IdleConfig {
        base: target.base.clone(),
        protocol: target.kind.protocol(),
        connections,
        rooms,
        idle,
        room_prefix: "idle".into(),
        connect: ConnectOptions {
            timeout: Duration::from_secs(30),
            read_buffer: 4 * 1024,
            ..ConnectOptions::default()
        },
        connect_concurrency: 128,
        server_pid: target.pid,
    })
    .await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

async fn storm_run(target: Target, joiners: usize, bytes: usize) -> Result<Measured> {
    let report = join_storm::run(&StormConfig {
        base: target.base.clone(),
        protocol: target.kind.protocol(),
        room: "storm".into(),
        doc_bytes: bytes,
        joiners,
        spread: Duration::from_secs(1),
        timeout: Duration::from_secs(120),
        server_pid: target.pid,
    })
    .await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

async fn ingest_run(target: Target, trace: &Trace) -> Result<Measured> {
    let report = ingest::run(
        &IngestConfig {
            base: target.base.clone(),
            protocol: target.kind.protocol(),
            room: "b4".into(),
            observers: 10,
            window: 1024,
            timeout: Duration::from_secs(240),
            server_pid: target.pid,
        },
        trace,
    )
    .await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

impl Harness {
    fn say(&mut self, text: &str) {
        println!("{text}");
        self.markdown.push_str(text);
        self.markdown.push('\n');
        std::fs::write(&self.markdown_path, &self.markdown).ok();
    }

    fn log_json(&mut self, value: serde_json::Value) {
        writeln!(self.log, "{value}").ok();
    }

    /// Runs `measure` `rounds` times against every server, alternating, and
    /// prints the table.
    async fn measure(&mut self, title: &str, rounds: usize, measure: &Measure<'_>) -> Results {
        let mut results = Results {
            title: title.to_owned(),
            servers: self.servers.clone(),
            runs: Vec::new(),
            notes: Vec::new(),
        };
        for round in 0..rounds {
            let mut row = Vec::new();
            for &kind in &self.servers.clone() {
                eprintln!("[{title}] round {} / {rounds}: {}", round + 1, kind.name());
                let outcome = self.once(kind, measure).await;
                match outcome {
                    Ok(measured) => {
                        self.log_json(json!({"config": title, "server": kind.name(), "round": round, "report": measured.report}));
                        row.push(Some(measured));
                    }
                    Err(e) => {
                        let note = format!("{} round {}: {e:#}", kind.name(), round + 1);
                        eprintln!("  failed: {note}");
                        self.log_json(json!({"config": title, "server": kind.name(), "round": round, "error": note}));
                        results.notes.push(note);
                        row.push(None);
                    }
                }
            }
            results.runs.push(row);
        }
        let table = render(&results);
        self.say(&table);
        results
    }

    /// One fresh server, one measurement, server stopped.
    async fn once(&mut self, kind: ServerKind, measure: &Measure<'_>) -> Result<Measured> {
        let mut server = Server::start(kind, &self.paths)?;
        let target = Target {
            base: server.base_url(),
            kind,
            pid: server.pid,
        };
        let outcome = measure(target).await;
        let alive = server.alive();
        let tail = server.log_tail();
        tokio::task::spawn_blocking(move || server.stop()).await?;
        if !alive {
            anyhow::bail!("server died during the run; log tail:\n{tail}");
        }
        outcome
    }

    /// Per server: the highest fan-out rate whose p99 stays within 50 ms
    /// with 99 % delivered. Starts from the fixed-rate medians, climbs the
    /// ladder until a rate fails, then bisects twice between the last
    /// passing and the first failing rate.
    async fn saturation(&mut self, plan: &Plan, fixed: &[(f64, Results)]) {
        let mut lines = vec![
            "## saturation: 200 clients, 20 rooms; highest rate with p99 ≤ 50 ms and delivery ≥ 99 %\n".to_owned(),
            "| server | saturation rate (updates/s per client) | deliveries/s sustained there | p99 there ms | lowest failing rate tried | why it failed |".to_owned(),
            "|---|---|---|---|---|---|".to_owned(),
        ];
        for (index, kind) in self.servers.clone().into_iter().enumerate() {
            let mut best: Option<Probe> = None;
            let mut failed: Option<Probe> = None;
            for (rate, results) in fixed {
                let value = |name: &str| column_median(results, index, name);
                let probe = Probe {
                    rate: *rate,
                    keeps_up: value(fanout::KEEPS_UP) == 1.0,
                    sustained: value("sustained deliveries/s"),
                    p99: value("p99 ms"),
                    why: format!(
                        "median of rounds: p99 {:.1} ms, delivery {:.3}",
                        value("p99 ms"),
                        value("delivery ratio")
                    ),
                };
                if !probe.keeps_up {
                    failed = Some(probe);
                    break;
                }
                best = Some(probe);
            }
            if failed.is_none() {
                for &rate in &plan.saturation_ladder {
                    let probe = self.probe(kind, rate, plan.saturation_duration).await;
                    if !probe.keeps_up {
                        failed = Some(probe);
                        break;
                    }
                    best = Some(probe);
                }
            }
            for _ in 0..2 {
                let (Some(low), Some(high)) = (&best, &failed) else {
                    break;
                };
                let rate = ((low.rate + high.rate) / 2.0).round();
                if rate <= low.rate || rate >= high.rate {
                    break;
                }
                let probe = self.probe(kind, rate, plan.saturation_duration).await;
                if probe.keeps_up {
                    best = Some(probe);
                } else {
                    failed = Some(probe);
                }
            }
            let (rate, dps, p99) = best
                .as_ref()
                .map_or(("below the lowest".to_owned(), f64::NAN, f64::NAN), |b| {
                    (format!("{}", b.rate), b.sustained, b.p99)
                });
            let (fail_rate, why) = failed.map_or(("none failed".to_owned(), String::new()), |f| {
                (format!("{}", f.rate), f.why)
            });
            lines.push(format!(
                "| {} | {rate} | {} | {} | {fail_rate} | {why} |",
                kind.name(),
                fmt(dps),
                fmt(p99)
            ));
        }
        lines.push(String::new());
        lines.push(format!(
            "Ladder above the fixed rates: {:?} updates/s per client, then two bisection steps; {} s per step, one run per step.\n",
            plan.saturation_ladder,
            plan.saturation_duration.as_secs()
        ));
        let text = lines.join("\n");
        self.say(&text);
    }

    /// One saturation step: a fresh server, one fan-out run at `rate`.
    async fn probe(&mut self, kind: ServerKind, rate: f64, duration: Duration) -> Probe {
        eprintln!("[saturation] {}: {rate} updates/s per client", kind.name());
        let outcome = self
            .once(kind, &|t| Box::pin(fanout_run(t, 200, 20, rate, duration)))
            .await;
        let measured = match outcome {
            Ok(measured) => measured,
            Err(e) => {
                return Probe {
                    rate,
                    keeps_up: false,
                    sustained: f64::NAN,
                    p99: f64::NAN,
                    why: format!("{e:#}"),
                };
            }
        };
        self.log_json(json!({"config": "saturation", "server": kind.name(), "rate": rate, "report": measured.report}));
        let value = |name: &str| {
            measured
                .metrics
                .iter()
                .find(|m| m.name == name)
                .map_or(f64::NAN, |m| m.value)
        };
        Probe {
            rate,
            keeps_up: value(fanout::KEEPS_UP) == 1.0,
            sustained: value("sustained deliveries/s"),
            p99: value("p99 ms"),
            why: format!(
                "p99 {:.1} ms, delivery {:.3}, closed by server {}, connect failures {}",
                value("p99 ms"),
                value("delivery ratio"),
                value("closed by server"),
                value("connect failures")
            ),
        }
    }
}

/// One rate tried in the saturation search.
struct Probe {
    rate: f64,
    keeps_up: bool,
    sustained: f64,
    p99: f64,
    why: String,
}

/// Median of one metric for one server over the rounds.
fn column_median(results: &Results, server: usize, name: &str) -> f64 {
    let values: Vec<f64> = results
        .runs
        .iter()
        .filter_map(|row| row[server].as_ref())
        .filter_map(|m| m.metrics.iter().find(|x| x.name == name).map(|x| x.value))
        .collect();
    median(&values)
}

/// Counts and pass/fail flags: a ratio of them means nothing.
const NO_RATIO: &[&str] = &[
    fanout::KEEPS_UP,
    "connect failures",
    "closed by server",
    "closed while idle",
];

/// The markdown table of one configuration.
fn render(results: &Results) -> String {
    let Some(names) = results
        .runs
        .iter()
        .flatten()
        .flatten()
        .map(|m| m.metrics.iter().map(|x| x.name).collect::<Vec<_>>())
        .next()
    else {
        return format!(
            "## {}\n\nno run succeeded\n\n{}\n",
            results.title,
            results.notes.join("\n")
        );
    };
    let hub = results
        .servers
        .iter()
        .position(|s| *s == ServerKind::CrdtHub);
    let peers: Vec<usize> = (0..results.servers.len())
        .filter(|&i| Some(i) != hub)
        .collect();
    let mut out = format!(
        "## {}\n\n| metric (median of {} rounds) |",
        results.title,
        results.runs.len()
    );
    for server in &results.servers {
        let _ = write!(out, " {} |", server.name());
    }
    if hub.is_some() {
        for &p in &peers {
            let _ = write!(out, " crdt-hub / {} |", results.servers[p].name());
        }
    }
    out.push_str("\n|---|");
    let columns = results.servers.len() + if hub.is_some() { peers.len() } else { 0 };
    out.push_str(&"---|".repeat(columns));
    out.push('\n');
    for name in names {
        let _ = write!(out, "| {name} |");
        for index in 0..results.servers.len() {
            let _ = write!(out, " {} |", fmt(column_median(results, index, name)));
        }
        if let Some(hub) = hub {
            for &p in &peers {
                if NO_RATIO.contains(&name) {
                    out.push_str(" — |");
                    continue;
                }
                let ratios: Vec<f64> = results
                    .runs
                    .iter()
                    .filter_map(|row| {
                        let get = |i: usize| {
                            row[i]
                                .as_ref()?
                                .metrics
                                .iter()
                                .find(|x| x.name == name)
                                .map(|x| x.value)
                        };
                        Some(get(hub)? / get(p)?)
                    })
                    .filter(|r| r.is_finite())
                    .collect();
                let _ = write!(out, " {} |", fmt(median(&ratios)));
            }
        }
        out.push('\n');
    }
    for note in &results.notes {
        let _ = write!(out, "\nfailed: {note}\n");
    }
    out
}

/// Three significant digits, thousands unseparated; `—` for missing.
pub(crate) fn fmt(value: f64) -> String {
    if !value.is_finite() {
        return "—".into();
    }
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}
