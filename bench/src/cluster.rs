//! `cluster`: the fan-out workload with each room's clients split over 1, 2
//! and 3 crdt-hub nodes joined through Redis, against the same load on one
//! node without Redis (issue 8). The nodes of a run share one fresh Postgres
//! database (a cluster must share storage) and a Redis key prefix of their
//! own, deleted afterwards; the baseline uses Postgres too, so Redis is the
//! only difference. Setups alternate within each round, as in `compare`, so
//! that slow drifts of a noisy machine hit them alike.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::compare::fmt;
use crate::conn::ConnectOptions;
use crate::fanout::{self, FanoutConfig, FanoutReport};
use crate::procstat;
use crate::servers::{Paths, Server, ServerKind};
use crate::stats::median;
use crate::wire::Protocol;

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub quick: bool,
    pub rounds: usize,
    pub crdt_hub: Option<PathBuf>,
    pub crdt_hub_args: Vec<String>,
    /// A database to connect to for creating and dropping the per-run ones.
    pub postgres: String,
    pub redis: String,
}

/// One way of serving the rooms.
#[derive(Debug, Clone, Copy)]
struct Setup {
    nodes: usize,
    redis: bool,
}

/// The baseline first: every ratio is taken against it.
const SETUPS: [Setup; 4] = [
    Setup {
        nodes: 1,
        redis: false,
    },
    Setup {
        nodes: 1,
        redis: true,
    },
    Setup {
        nodes: 2,
        redis: true,
    },
    Setup {
        nodes: 3,
        redis: true,
    },
];

impl Setup {
    fn label(self) -> String {
        match (self.nodes, self.redis) {
            (1, false) => "1 node, no Redis".into(),
            (1, true) => "1 node + Redis".into(),
            (n, _) => format!("{n} nodes + Redis"),
        }
    }
}

const CLIENTS: usize = 200;
const ROOMS: usize = 20;

/// What one run gave.
struct Outcome {
    report: FanoutReport,
    /// CPU Redis used over the run (`INFO cpu`, whole server).
    redis_cpu_s: f64,
    /// Warning and error lines in the nodes' logs, and the first of them.
    log_problems: usize,
    first_problem: Option<String>,
}

impl Outcome {
    /// CPU of the nodes and of Redis per delivery: the cluster's whole cost.
    fn us_per_delivery_with_redis(&self) -> f64 {
        let received = self.report.received as f64;
        (self.report.server_cpu_s + self.redis_cpu_s) * 1e6 / received
    }
}

/// Runs every setup at every rate and prints one table per rate.
///
/// # Errors
/// A missing crdt-hub binary, or Postgres or Redis not reachable through
/// `psql` and `redis-cli`.
pub async fn run(options: ClusterOptions) -> Result<()> {
    let mut paths = Paths::from_workspace();
    if let Some(binary) = options.crdt_hub.clone() {
        paths.crdt_hub = binary;
    }
    paths.crdt_hub_args = options.crdt_hub_args.clone();
    paths.prepare(&[ServerKind::CrdtHub])?;
    psql(&options.postgres, "SELECT 1").context("Postgres (psql) is needed")?;
    redis_cli(&options.redis, &["PING"]).context("Redis (redis-cli) is needed")?;
    let fd_limit = procstat::raise_fd_limit();
    let (rates, duration) = if options.quick {
        (vec![10.0, 25.0], Duration::from_secs(3))
    } else {
        (vec![10.0, 25.0], Duration::from_secs(10))
    };

    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let out_dir = std::fs::canonicalize(&out_dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut log = std::fs::File::create(out_dir.join(format!("cluster-{stamp}.jsonl")))?;
    let markdown_path = out_dir.join(format!("cluster-{stamp}.md"));
    let mut markdown = String::new();
    let mut say = |text: &str| {
        println!("{text}");
        markdown.push_str(text);
        markdown.push('\n');
        std::fs::write(&markdown_path, &markdown).ok();
    };
    say(&format!(
        "# cluster{}: {} round(s), {CLIENTS} clients in {ROOMS} rooms, {} s per run; crdt-hub binary {} {}; Postgres {}; Redis {}; open-file limit {fd_limit}\n",
        if options.quick { " --quick" } else { "" },
        options.rounds,
        duration.as_secs(),
        paths.crdt_hub.display(),
        paths.crdt_hub_args.join(" "),
        options.postgres,
        options.redis,
    ));

    let mut serial = 0;
    for rate in rates {
        let title = format!(
            "{CLIENTS} clients in {ROOMS} rooms, {rate} updates/s each, each room's clients round-robin over the nodes"
        );
        let mut runs: Vec<Vec<Option<Outcome>>> = Vec::new();
        let mut notes = Vec::new();
        for round in 0..options.rounds {
            let mut row = Vec::new();
            for setup in SETUPS {
                serial += 1;
                eprintln!(
                    "[{rate}/s] round {} / {}: {}",
                    round + 1,
                    options.rounds,
                    setup.label()
                );
                match once(&paths, &options, setup, rate, duration, serial).await {
                    Ok(outcome) => {
                        writeln!(log, "{}", json!({"rate": rate, "setup": setup.label(), "round": round,
                            "redis_cpu_s": outcome.redis_cpu_s, "log_problems": outcome.log_problems,
                            "first_problem": outcome.first_problem, "report": outcome.report}))
                        .ok();
                        if let Some(problem) = &outcome.first_problem {
                            notes.push(format!(
                                "{} round {}: {} warning/error log lines, first: {problem}",
                                setup.label(),
                                round + 1,
                                outcome.log_problems
                            ));
                        }
                        row.push(Some(outcome));
                    }
                    Err(e) => {
                        let note = format!("{} round {}: {e:#}", setup.label(), round + 1);
                        eprintln!("  failed: {note}");
                        writeln!(log, "{}", json!({"rate": rate, "setup": setup.label(), "round": round, "error": note})).ok();
                        notes.push(note);
                        row.push(None);
                    }
                }
            }
            runs.push(row);
        }
        say(&render(&title, &runs, &notes));
    }
    eprintln!("tables also in {}", markdown_path.display());
    Ok(())
}

/// One run: a fresh database, `setup.nodes` fresh nodes, the fan-out
/// workload, everything stopped and removed again.
async fn once(
    paths: &Paths,
    options: &ClusterOptions,
    setup: Setup,
    rate: f64,
    duration: Duration,
    serial: usize,
) -> Result<Outcome> {
    let unique = format!("{}_{serial}", std::process::id());
    let database = Database::create(&options.postgres, &format!("crdt_hub_bench_{unique}"))?;
    let prefix = format!("crdt-hub-bench-{unique}");
    let extra: Vec<String> = if setup.redis {
        vec![
            "--redis-url".into(),
            options.redis.clone(),
            "--redis-prefix".into(),
            prefix.clone(),
        ]
    } else {
        Vec::new()
    };
    // One after another: the first node migrates the fresh database.
    let mut nodes = Vec::new();
    for _ in 0..setup.nodes {
        nodes.push(Server::start_crdt_hub(paths, &database.url, &extra)?);
    }
    let redis_before = redis_cpu_s(&options.redis)?;
    let report = fanout::run(&FanoutConfig {
        bases: nodes.iter().map(Server::base_url).collect(),
        protocol: Protocol::YWebsocket,
        clients: CLIENTS,
        rooms: ROOMS,
        rate,
        arrivals: crate::arrivals::Arrivals::Even,
        duration,
        room_prefix: "fanout".into(),
        connect: ConnectOptions::default(),
        connect_concurrency: 64,
        drain_timeout: Duration::from_secs(10),
        server_pids: nodes.iter().map(|n| n.pid).collect(),
        check_convergence: true,
        gapped_updates: 0,
        preload_bytes: 0,
    })
    .await;
    let redis_after = redis_cpu_s(&options.redis)?;
    let mut dead = Vec::new();
    for node in &mut nodes {
        if !node.alive() {
            dead.push(format!("node on port {}:\n{}", node.port, node.log_tail()));
        }
    }
    let (mut log_problems, mut first_problem) = (0, None);
    for node in &nodes {
        let (count, first) = node.log_problems();
        log_problems += count;
        first_problem = first_problem.or(first);
    }
    let stops: Vec<_> = nodes
        .into_iter()
        .map(|node| tokio::task::spawn_blocking(move || node.stop()))
        .collect();
    for stop in stops {
        stop.await?;
    }
    if setup.redis {
        delete_keys(&options.redis, &prefix)?;
    }
    drop(database);
    if !dead.is_empty() {
        bail!("node died during the run:\n{}", dead.join("\n"));
    }
    Ok(Outcome {
        report: report?,
        redis_cpu_s: redis_after - redis_before,
        log_problems,
        first_problem,
    })
}

/// The table of one rate: a row per setup, medians over the rounds; the
/// ratio is the median of the per-round ratios to the baseline of the same
/// round.
fn render(title: &str, runs: &[Vec<Option<Outcome>>], notes: &[String]) -> String {
    type Get = fn(&Outcome) -> f64;
    let columns: [(&str, Get); 14] = [
        ("deliveries/s", |o| o.report.sustained_dps),
        ("delivery ratio", |o| o.report.delivery_ratio),
        ("p50 ms", |o| o.report.latency.p50_ms),
        ("p99 ms", |o| o.report.latency.p99_ms),
        ("p999 ms", |o| o.report.latency.p999_ms),
        ("rooms converged %", |o| {
            100.0 * o.report.rooms_converged as f64 / o.report.rooms.max(1) as f64
        }),
        ("node CPU s (sum)", |o| o.report.server_cpu_s),
        ("Redis CPU s", |o| o.redis_cpu_s),
        ("CPU µs/delivery, nodes", |o| o.report.cpu_us_per_delivery),
        (
            "CPU µs/delivery, nodes + Redis",
            Outcome::us_per_delivery_with_redis,
        ),
        ("send lag p99 ms", |o| o.report.send_lag.p99_ms),
        ("loadgen CPU s", |o| o.report.loadgen_cpu_s),
        ("duplicates", |o| o.report.duplicates as f64),
        ("closed + failed connections", |o| {
            (o.report.closed_by_server + o.report.connect_failures) as f64
        }),
    ];
    let ratios: [(&str, Get); 2] = [
        (
            "CPU/delivery incl. Redis ÷ baseline",
            Outcome::us_per_delivery_with_redis,
        ),
        ("p99 ÷ baseline", |o| o.report.latency.p99_ms),
    ];
    let mut out = format!(
        "## {title}\n\nMedian of {} rounds; baseline = 1 node, no Redis.\n\n| setup |",
        runs.len()
    );
    for (name, _) in columns.iter().chain(&ratios) {
        let _ = write!(out, " {name} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(columns.len() + ratios.len()));
    out.push('\n');
    for (index, setup) in SETUPS.iter().enumerate() {
        let _ = write!(out, "| {} |", setup.label());
        for (_, get) in &columns {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|row| row[index].as_ref().map(get))
                .collect();
            let _ = write!(out, " {} |", fmt(median(&values)));
        }
        for (_, get) in &ratios {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|row| Some(get(row[index].as_ref()?) / get(row[0].as_ref()?)))
                .filter(|r| r.is_finite())
                .collect();
            let _ = write!(out, " {} |", fmt(median(&values)));
        }
        out.push('\n');
    }
    for note in notes {
        let _ = write!(out, "\nnote: {note}\n");
    }
    out
}

/// A Postgres database that exists until dropped.
struct Database {
    /// For the nodes.
    url: String,
    admin: String,
    name: String,
}

impl Database {
    fn create(admin: &str, name: &str) -> Result<Self> {
        let (base, _) = admin
            .rsplit_once('/')
            .context("the Postgres URL needs a database path")?;
        psql(
            admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        psql(admin, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            url: format!("{base}/{name}"),
            admin: admin.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.admin, &sql) {
            eprintln!("could not drop {}: {e:#}", self.name);
        }
    }
}

fn psql(url: &str, sql: &str) -> Result<String> {
    output(Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql]))
}

fn redis_cli(url: &str, args: &[&str]) -> Result<String> {
    output(Command::new("redis-cli").args(["-u", url]).args(args))
}

fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Redis' own CPU time so far (user + system, all its threads).
fn redis_cpu_s(url: &str) -> Result<f64> {
    let info = redis_cli(url, &["INFO", "cpu"])?;
    let field = |key: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    match (field("used_cpu_user:"), field("used_cpu_sys:")) {
        (Some(user), Some(sys)) => Ok(user + sys),
        _ => bail!("no used_cpu_user/used_cpu_sys in INFO cpu: {info}"),
    }
}

/// Deletes the run's streams and leases (`{prefix}:*`), nothing else: other
/// users of this Redis (the integration tests) keep their keys.
fn delete_keys(url: &str, prefix: &str) -> Result<()> {
    let listed = redis_cli(url, &["--scan", "--pattern", &format!("{prefix}:*")])?;
    let keys: Vec<&str> = listed.lines().filter(|k| !k.is_empty()).collect();
    for chunk in keys.chunks(500) {
        redis_cli(url, &[&["DEL"], chunk].concat())?;
    }
    Ok(())
}
