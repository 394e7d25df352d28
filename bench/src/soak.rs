//! `soak`: mixed load on one crdt-hub for a long time (30 min by default),
//! then a verdict (issue 24, item 6). The other commands run for seconds
//! and cannot see a slow leak; this one runs fan-out rounds, churn (rooms
//! emptied, unloaded after the server's idle timeout, reopened) and REST
//! API reads side by side, samples the server every 10 s, and fails when
//! RSS grew past 5 % of its level after warm-up, when the server holds
//! more file descriptors at rest than it did after warm-up, or when any
//! room does not hold exactly what was written to it.
//!
//! Timeline: warm-up load, a quiet point (every client gone, every room
//! unloaded: the descriptor baseline), the measured load, a second quiet
//! point, then every room of the run checked once more, loaded back from
//! storage. The quiet points add about two idle timeouts to the wall time.

mod api;
mod churn;
mod report;
mod verdict;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::sync::watch;
use tokio::time::Instant;

use self::api::ApiStats;
use self::churn::{ChurnRooms, ChurnStats};
use self::report::{Phase, QuietPoint, Round, SoakReport, print_summary, sample_loop};
pub use self::verdict::Limits;
use crate::arrivals::Arrivals;
use crate::conn::{self, ConnectOptions};
use crate::converge;
use crate::fanout::{self, FanoutConfig};
use crate::procstat;
use crate::servers::{Paths, Server, ServerKind};
use crate::stats::MIB;
use crate::wire::{Protocol, Wire};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    /// Default: [`default_warmup`].
    pub warmup: Option<Duration>,
    pub sample_interval: Duration,
    /// A running server (`ws://` URL and process id) instead of starting one.
    pub target: Option<(String, u32)>,
    /// Passed to the server the soak starts; with `target`, what the
    /// running server was given (the quiet points wait for it).
    pub room_idle_timeout: Duration,
    pub fanout_clients: usize,
    pub fanout_rooms: usize,
    pub rate: f64,
    pub arrivals: Arrivals,
    /// Length of one fan-out round; each round uses fresh rooms.
    pub fanout_round: Duration,
    /// Churn rooms open at a time (slots).
    pub churn_rooms: usize,
    /// Visits a churn room gets before a fresh one replaces it; 0: never.
    pub churn_visits_per_room: u32,
    pub churn_workers: usize,
    pub api_interval: Duration,
    pub limits: Limits,
    pub crdt_hub: Option<PathBuf>,
    pub crdt_hub_args: Vec<String>,
    pub json: bool,
}

/// The warm-up when none is given: a fifth of the run, at most 5 min.
pub fn default_warmup(duration: Duration) -> Duration {
    (duration / 5).min(Duration::from_secs(300))
}

/// `30m`, `90s`, `1h30m`, `500ms` or a bare number of seconds, as the
/// server's own duration flags.
///
/// # Errors
/// Anything else.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 30m, 90s or 180"))
}

/// What every phase shares.
struct Ctx<'a> {
    options: &'a SoakOptions,
    base: String,
    http: SocketAddr,
    pid: u32,
    prefix: String,
    started: Instant,
    phase: Arc<Mutex<Phase>>,
    churn: Arc<ChurnRooms>,
    churn_stats: Arc<Mutex<ChurnStats>>,
}

impl Ctx<'_> {
    fn say(&self, text: &str) {
        if self.options.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().expect("not poisoned") = phase;
    }
}

/// Runs the soak and prints the report.
///
/// # Errors
/// The server does not start or vanishes, or the verdict is a failure.
pub async fn run(options: SoakOptions) -> Result<()> {
    let warmup = options
        .warmup
        .unwrap_or_else(|| default_warmup(options.duration));
    if warmup >= options.duration {
        bail!(
            "the warm-up ({warmup:?}) must be shorter than the run ({:?})",
            options.duration
        );
    }
    procstat::raise_fd_limit();
    let mut server = None;
    let (base, pid) = match &options.target {
        Some((url, pid)) => (url.trim_end_matches('/').to_owned(), *pid),
        None => {
            let started = start_server(&options)?;
            let target = (started.base_url(), started.pid);
            server = Some(started);
            target
        }
    };
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let prefix = format!("soak-{unique}");
    let ctx = Ctx {
        options: &options,
        http: conn::loopback_addr(&base)?,
        churn: Arc::new(ChurnRooms::new(
            Protocol::YWebsocket,
            &format!("{prefix}-c"),
            options.churn_rooms,
            options.churn_visits_per_room,
        )),
        base,
        pid,
        prefix,
        started: Instant::now(),
        phase: Arc::new(Mutex::new(Phase::Warmup)),
        churn_stats: Arc::default(),
    };
    ctx.say(&format!(
        "soak of {} (pid {pid}): {:?} after a {warmup:?} warm-up; fan-out {} clients in {} rooms at {}/s, rounds of {:?}; churn over {} rooms ({} workers, a fresh room every {} visits, 0: never); an API read every {:?}; room idle timeout {:?}",
        ctx.base, options.duration - warmup, options.fanout_clients, options.fanout_rooms, options.rate,
        options.fanout_round, options.churn_rooms, options.churn_workers, options.churn_visits_per_room, options.api_interval, options.room_idle_timeout,
    ));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (stop_sampling, stopped) = watch::channel(false);
    let sampler = tokio::spawn(sample_loop(
        ctx.http,
        pid,
        options.sample_interval,
        ctx.started,
        ctx.phase.clone(),
        samples.clone(),
        options.json,
        stopped,
    ));

    let mut rounds = Vec::new();
    let mut api = load(&ctx, warmup, &mut rounds).await?;
    let mut quiet_points = vec![quiet_point(&ctx).await];
    ctx.set_phase(Phase::Load);
    api.merge(load(&ctx, options.duration - warmup, &mut rounds).await?);
    quiet_points.push(quiet_point(&ctx).await);

    // Every room of the run, loaded back from storage.
    ctx.set_phase(Phase::Check);
    let mut wires: Vec<Arc<Wire>> = Vec::new();
    let mut expected = Vec::new();
    for round in &rounds {
        wires.extend(Wire::for_rooms(
            Protocol::YWebsocket,
            &round.prefix,
            options.fanout_rooms,
        ));
        expected.extend(round.expected_rooms.iter().cloned());
    }
    wires.extend(ctx.churn.wires());
    expected.extend(ctx.churn.expected());
    let connect = ConnectOptions::default();
    let (rooms_converged, convergence_errors) =
        converge::check_rooms(std::slice::from_ref(&ctx.base), &wires, &expected, connect).await;

    stop_sampling.send(true).ok();
    sampler.await?;
    let samples = samples.lock().expect("not poisoned").clone();
    let server_alive = procstat::sample(Some(pid)).is_ok();
    let (server_log_problems, first_log_problem) = match server {
        Some(server) => {
            let problems = server.log_problems();
            tokio::task::spawn_blocking(move || server.stop()).await?;
            problems
        }
        None => (0, None),
    };

    let load_rss: Vec<f64> = samples
        .iter()
        .filter(|s| s.phase == Phase::Load)
        .map(|s| s.rss_mib)
        .collect();
    let memory = verdict::judge(
        &load_rss,
        quiet_points[0].fds,
        quiet_points[1].fds,
        options.limits,
    );
    let busy: Vec<f64> = samples
        .iter()
        .filter(|s| matches!(s.phase, Phase::Warmup | Phase::Load))
        .map(|s| s.cpu_percent)
        .collect();
    let mut report = SoakReport {
        duration_s: options.duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        room_idle_timeout_s: options.room_idle_timeout.as_secs_f64(),
        mean_cpu_percent: busy.iter().sum::<f64>() / busy.len().max(1) as f64,
        samples,
        rounds,
        churn: ctx.churn_stats.lock().expect("not poisoned").clone(),
        api,
        quiet_points,
        memory,
        rooms_checked: wires.len(),
        rooms_converged,
        convergence_errors,
        server_log_problems,
        first_log_problem,
        server_alive,
        failures: Vec::new(),
        passed: false,
    };
    report.judge(options.limits);
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    if !report.passed {
        bail!("soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}

/// `target/release/crdt-hub serve` on a fresh SQLite file, with the
/// harness' lifted connection limits, API reads unlimited too, and the
/// short idle timeout. A flag given in `crdt_hub_args` replaces the
/// soak's own (clap refuses a flag twice).
fn start_server(options: &SoakOptions) -> Result<Server> {
    let mut paths = Paths::from_workspace();
    if let Some(binary) = &options.crdt_hub {
        paths.crdt_hub = binary.clone();
    }
    let own = [
        (
            "--room-idle-timeout",
            format!("{}ms", options.room_idle_timeout.as_millis()),
        ),
        ("--rate-api-per-ip", "1000000".to_owned()),
        ("--rate-api-burst-per-ip", "1000000".to_owned()),
    ];
    for (flag, value) in own {
        let given = options
            .crdt_hub_args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if !given {
            paths.crdt_hub_args.push(format!("{flag}={value}"));
        }
    }
    paths
        .crdt_hub_args
        .extend(options.crdt_hub_args.iter().cloned());
    paths.prepare(&[ServerKind::CrdtHub])?;
    Server::start(ServerKind::CrdtHub, &paths)
}

/// Fan-out rounds, churn and API reads side by side for `length`.
async fn load(ctx: &Ctx<'_>, length: Duration, rounds: &mut Vec<Round>) -> Result<ApiStats> {
    let options = ctx.options;
    let until = Instant::now() + length;
    let connect = ConnectOptions::default();
    let workers: Vec<_> = (0..options.churn_workers)
        .map(|w| {
            let (base, rooms, stats) =
                (ctx.base.clone(), ctx.churn.clone(), ctx.churn_stats.clone());
            tokio::spawn(churn::worker(
                base,
                rooms,
                w,
                options.churn_workers,
                connect,
                until,
                stats,
            ))
        })
        .collect();
    let (stop_api, api_stopped) = watch::channel(false);
    let api = tokio::spawn(api::reader(
        ctx.http,
        ctx.churn.clone(),
        options.api_interval,
        api_stopped,
    ));
    let fanout = fanout_rounds(ctx, until, rounds).await;
    for worker in workers {
        worker.await?;
    }
    stop_api.send(true).ok();
    let api = api.await?;
    fanout?;
    Ok(api)
}

/// Fan-out rounds until `until`, each on fresh rooms: when a round ends its
/// clients leave and its rooms unload while the next round fills new ones.
async fn fanout_rounds(ctx: &Ctx<'_>, until: Instant, rounds: &mut Vec<Round>) -> Result<()> {
    let options = ctx.options;
    loop {
        // A round also connects, drains and checks (a few seconds).
        let left = until.saturating_duration_since(Instant::now());
        if left < Duration::from_secs(5) {
            return Ok(());
        }
        let config = FanoutConfig {
            bases: vec![ctx.base.clone()],
            protocol: Protocol::YWebsocket,
            clients: options.fanout_clients,
            rooms: options.fanout_rooms,
            rate: options.rate,
            arrivals: options.arrivals,
            duration: options.fanout_round.min(left),
            room_prefix: format!("{}-f{}", ctx.prefix, rounds.len()),
            connect: ConnectOptions::default(),
            connect_concurrency: 32,
            drain_timeout: Duration::from_secs(10),
            server_pids: vec![ctx.pid],
            check_convergence: true,
            gapped_updates: 0,
            preload_bytes: 0,
        };
        let report = fanout::run(&config).await?;
        let mut problems = Vec::new();
        if report.connect_failures > 0 {
            problems.push(format!(
                "{} connect failures {:?}",
                report.connect_failures, report.connect_errors
            ));
        }
        if report.closed_by_server > 0 {
            problems.push(format!(
                "{} closed by the server {:?}",
                report.closed_by_server, report.close_reasons
            ));
        }
        if report.received < report.expected {
            problems.push(format!(
                "{} of {} deliveries",
                report.received, report.expected
            ));
        }
        if report.rooms_converged < report.rooms {
            problems.push(format!(
                "converged {}/{} {:?}",
                report.rooms_converged, report.rooms, report.convergence_errors
            ));
        }
        ctx.say(&format!(
            "  fan-out {}: {} clients, {} updates, {}/{} delivered, p99 {:.1} ms, {}/{} rooms converged",
            config.room_prefix, report.connected, report.sent, report.received, report.expected,
            report.latency.p99_ms, report.rooms_converged, report.rooms,
        ));
        rounds.push(Round {
            prefix: config.room_prefix,
            connected: report.connected,
            connect_failures: report.connect_failures,
            sent: report.sent,
            expected: report.expected,
            received: report.received,
            p99_ms: report.latency.p99_ms,
            closed_by_server: report.closed_by_server,
            rooms_converged: report.rooms_converged,
            problems,
            expected_rooms: report.expected_rooms,
        });
    }
}

/// Waits until the server has no connection and no room loaded (at most
/// the idle timeout and a minute), then counts its descriptors: the lowest
/// of a few readings, since the sampler's own `/metrics` request may be
/// open at any one of them.
async fn quiet_point(ctx: &Ctx<'_>) -> QuietPoint {
    ctx.set_phase(Phase::Quiet);
    let began = Instant::now();
    let deadline = began + ctx.options.room_idle_timeout + Duration::from_secs(60);
    let reached = loop {
        if let Ok(g) = api::read_gauges(ctx.http).await
            && g.connections == 0
            && g.rooms == 0
        {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let waited_s = began.elapsed().as_secs_f64();
    let mut fds = u64::MAX;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        fds = fds.min(procstat::open_fds(ctx.pid).unwrap_or(0));
    }
    let quiet = QuietPoint {
        t_s: ctx.started.elapsed().as_secs_f64(),
        reached,
        waited_s,
        fds,
        rss_mib: procstat::rss_bytes(ctx.pid) as f64 / MIB,
    };
    ctx.say(&format!(
        "  quiet point: {} after {:.1} s; {} fds, RSS {:.1} MiB",
        if reached {
            "no connection, no room loaded"
        } else {
            "NOT quiet"
        },
        quiet.waited_s,
        quiet.fds,
        quiet.rss_mib
    ));
    quiet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_servers() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("180"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn warm_up_is_a_fifth_up_to_five_minutes() {
        assert_eq!(
            default_warmup(Duration::from_secs(1800)),
            Duration::from_secs(300)
        );
        assert_eq!(
            default_warmup(Duration::from_secs(180)),
            Duration::from_secs(36)
        );
    }
}
