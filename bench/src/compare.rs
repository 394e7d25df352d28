//! `compare`: every configuration against every server, servers started
//! fresh per run and alternated (A B C A B C …) so that slow drifts of a
//! noisy machine hit them alike; tables of medians and of crdt-hub/peer
//! ratios (the median of the per-round ratios, each taken between runs
//! minutes apart rather than across the whole session).

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::arrivals::Arrivals;
use crate::ingest;
use crate::procstat;
use crate::servers::{self, Paths, Server, ServerKind};
use crate::stats::Metric;
use crate::wire::Protocol;

mod runs;
mod saturation;
mod table;

use runs::{fanout_run, hot_room_run, idle_run, ingest_run, presence_run, storm_run};
pub(crate) use table::fmt;
use table::render;

/// The configurations `compare` knows, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Config {
    /// 200 clients in 20 rooms at 10, 25 and 50 updates/s each.
    Fanout,
    /// Raise the fan-out rate until p99 > 50 ms or delivery < 99 %.
    Saturation,
    /// 500 clients in one room, 2 updates/s each.
    BigRoom,
    /// 500 clients in one room on a 4 MB document, 2 updates/s each.
    HotRoom,
    /// 500 clients in one room, each moving its cursor twice a second.
    Presence,
    /// The same, each client sending back every awareness message it
    /// receives, as y-websocket and Hocuspocus providers before v4 do.
    PresenceEcho,
    /// 10,000 idle connections over 1,000 rooms.
    Idle,
    /// 1,000 clients join a room holding a 5 MB document within 1 s.
    JoinStorm,
    /// The B4 trace through one sender to 10 observers.
    B4,
}

impl Config {
    /// What `compare --protocol` runs when `--only` is not given: over
    /// Hocuspocus, the fan-out configurations (the targets, with
    /// the same sizes as over y-websocket).
    pub fn defaults(protocol: Protocol) -> Vec<Self> {
        match protocol {
            Protocol::YWebsocket => vec![
                Self::Fanout,
                Self::Saturation,
                Self::BigRoom,
                Self::HotRoom,
                Self::Presence,
                Self::PresenceEcho,
                Self::Idle,
                Self::JoinStorm,
                Self::B4,
            ],
            Protocol::Hocuspocus => vec![
                Self::Fanout,
                Self::Saturation,
                Self::BigRoom,
                Self::Presence,
            ],
        }
    }
}

/// What `compare --protocol` compares when `--servers` is not given:
/// crdt-hub over that protocol against the servers its users would run
/// instead. Hocuspocus 3.x is in both: over y-websocket it is the peer
/// crdt-hub has always been measured against.
pub fn default_servers(protocol: Protocol) -> Vec<ServerKind> {
    match protocol {
        Protocol::YWebsocket => vec![
            ServerKind::CrdtHub,
            ServerKind::YWebsocket,
            ServerKind::Hocuspocus,
        ],
        Protocol::Hocuspocus => vec![
            ServerKind::CrdtHubHp,
            ServerKind::Hocuspocus,
            ServerKind::Hocuspocus4,
        ],
    }
}

#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub quick: bool,
    /// Only for the record: `servers` and `configs` already follow it.
    pub protocol: Protocol,
    pub rounds: usize,
    pub servers: Vec<ServerKind>,
    pub configs: Vec<Config>,
    pub trace: PathBuf,
    pub crdt_hub: Option<PathBuf>,
    pub crdt_hub_args: Vec<String>,
    /// How fan-out clients space their sends.
    pub arrivals: Arrivals,
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
    hot_room_bytes: usize,
    presence_clients: usize,
    presence_duration: Duration,
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
                hot_room_bytes: 1 << 20,
                presence_clients: 200,
                presence_duration: Duration::from_secs(3),
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
            hot_room_bytes: 4_000_000,
            presence_clients: 500,
            presence_duration: Duration::from_secs(10),
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
    arrivals: Arrivals,
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
    /// Appended to every table's title: a Hocuspocus-protocol table must
    /// not be mistaken for (or merged with) the y-websocket one, nor a
    /// Poisson-arrivals one for an even-beat one.
    title_suffix: String,
    arrivals: Arrivals,
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
    let all_hocuspocus = options
        .servers
        .iter()
        .all(|s| s.protocol() == Protocol::Hocuspocus);
    let mut harness = Harness {
        servers: options.servers.clone(),
        title_suffix: match (all_hocuspocus, options.arrivals) {
            (true, Arrivals::Even) => " (Hocuspocus protocol)".into(),
            (true, Arrivals::Poisson) => " (Hocuspocus protocol, Poisson arrivals)".into(),
            (false, Arrivals::Even) => String::new(),
            (false, Arrivals::Poisson) => " (Poisson arrivals)".into(),
        },
        arrivals: options.arrivals,
        log: std::fs::File::create(&log_path)?,
        markdown: String::new(),
        markdown_path: out_dir.join(format!("compare-{stamp}.md")),
        paths,
    };
    harness.say(&format!(
        "# compare{}{}{}: {} round(s), servers {}; crdt-hub binary {} {}; open-file limit {fd_limit}; node {} (hocuspocus4: {}); @y/websocket-server {}, @hocuspocus/server {}, hocuspocus4 {}, yjs {}\n",
        if options.quick { " --quick" } else { "" },
        match options.protocol {
            Protocol::YWebsocket => "",
            Protocol::Hocuspocus => " --protocol hocuspocus",
        },
        match options.arrivals {
            Arrivals::Even => "",
            Arrivals::Poisson => " --arrivals poisson",
        },
        options.rounds,
        options.servers.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        harness.paths.crdt_hub.display(),
        harness.paths.crdt_hub_args.join(" "),
        servers::node_version(&harness.paths.node_for(ServerKind::Hocuspocus)),
        servers::node_version(&harness.paths.node_for(ServerKind::Hocuspocus4)),
        servers::package_version(&harness.paths.peers, "@y/websocket-server"),
        servers::package_version(&harness.paths.peers, "@hocuspocus/server"),
        servers::package_version(&harness.paths.peers, servers::HOCUSPOCUS4),
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
            Config::HotRoom => {
                let (clients, bytes) = (plan.big_room_clients, plan.hot_room_bytes);
                harness
                    .measure(
                        &format!(
                            "hot room: {clients} clients, one room on a {bytes}-byte document, 2 updates/s each"
                        ),
                        options.rounds,
                        &|t| Box::pin(hot_room_run(t, clients, bytes, plan.big_room_duration)),
                    )
                    .await;
            }
            Config::Presence | Config::PresenceEcho => {
                let clients = plan.presence_clients;
                let echo = *config == Config::PresenceEcho;
                let (kind, echoing) = if echo {
                    (", echoing clients", ", each sending back what it receives")
                } else {
                    ("", "")
                };
                harness
                    .measure(
                        &format!(
                            "presence storm{kind}: {clients} clients in one room, 2 cursor moves/s each{echoing}"
                        ),
                        options.rounds,
                        &|t| Box::pin(presence_run(t, clients, 2.0, plan.presence_duration, echo)),
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
        let title = &format!("{title}{}", self.title_suffix);
        let mut results = Results {
            title: title.clone(),
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
            arrivals: self.arrivals,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hocuspocus_preset_drives_everyone_over_hocuspocus() {
        let servers = default_servers(Protocol::Hocuspocus);
        assert!(servers.iter().all(|s| s.protocol() == Protocol::Hocuspocus));
        assert_eq!(servers.iter().filter(|s| s.is_crdt_hub()).count(), 1);
        // The fan-out targets, as over y-websocket: the same sizes follow
        // from the shared Plan.
        let ws = Config::defaults(Protocol::YWebsocket);
        for config in Config::defaults(Protocol::Hocuspocus) {
            assert!(ws.contains(&config));
        }
    }
}
