//! What the soak records (a sample every 10 s, each fan-out round, the
//! quiet points), the rules that turn it into a verdict, and how it is
//! printed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::api::{self, ApiStats};
use super::churn::ChurnStats;
use super::verdict::{Limits, MemoryVerdict};
use crate::converge::Expected;
use crate::procstat;
use crate::stats::MIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Phase {
    Warmup,
    Load,
    Quiet,
    Check,
}

/// One reading of the server.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Sample {
    pub(super) t_s: f64,
    pub(super) phase: Phase,
    /// The server's own gauges (`None` when `/metrics` did not answer).
    pub(super) connections: Option<u64>,
    pub(super) rooms: Option<u64>,
    pub(super) rss_mib: f64,
    pub(super) fds: u64,
    /// Of one core, since the previous sample.
    pub(super) cpu_percent: f64,
}

/// One fan-out round, as the report lists it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Round {
    pub(super) prefix: String,
    pub(super) connected: usize,
    pub(super) connect_failures: usize,
    pub(super) sent: u64,
    pub(super) expected: u64,
    pub(super) received: u64,
    pub(super) p99_ms: f64,
    pub(super) closed_by_server: usize,
    pub(super) rooms_converged: usize,
    pub(super) problems: Vec<String>,
    #[serde(skip)]
    pub(super) expected_rooms: Vec<Expected>,
}

/// Every client gone and every room unloaded (if `reached`).
#[derive(Debug, Clone, Serialize)]
pub(super) struct QuietPoint {
    pub(super) t_s: f64,
    pub(super) reached: bool,
    pub(super) waited_s: f64,
    pub(super) fds: u64,
    pub(super) rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct SoakReport {
    pub(super) duration_s: f64,
    pub(super) warmup_s: f64,
    pub(super) room_idle_timeout_s: f64,
    pub(super) samples: Vec<Sample>,
    pub(super) rounds: Vec<Round>,
    pub(super) churn: ChurnStats,
    pub(super) api: ApiStats,
    pub(super) quiet_points: Vec<QuietPoint>,
    pub(super) memory: MemoryVerdict,
    pub(super) mean_cpu_percent: f64,
    pub(super) rooms_checked: usize,
    pub(super) rooms_converged: usize,
    pub(super) convergence_errors: Vec<String>,
    pub(super) server_log_problems: usize,
    pub(super) first_log_problem: Option<String>,
    pub(super) server_alive: bool,
    pub(super) failures: Vec<String>,
    pub(super) passed: bool,
}

impl SoakReport {
    /// Every rule the run broke, one line each; sets `failures` and
    /// `passed`.
    pub(super) fn judge(&mut self, limits: Limits) {
        let mut failures = self.memory.failures(limits);
        if !self.server_alive {
            failures.push("the server process is gone".into());
        }
        for (label, quiet) in ["after warm-up", "at the end"]
            .iter()
            .zip(&self.quiet_points)
        {
            if !quiet.reached {
                failures.push(format!(
                    "{label}: connections and loaded rooms did not drop to 0 within {:.0} s",
                    quiet.waited_s
                ));
            }
        }
        for round in self.rounds.iter().filter(|r| !r.problems.is_empty()) {
            failures.push(format!(
                "fan-out {}: {}",
                round.prefix,
                round.problems.join("; ")
            ));
        }
        if self.churn.failures > 0 {
            failures.push(format!(
                "churn: {} failures, first {:?}",
                self.churn.failures, self.churn.errors
            ));
        }
        if self.api.failures > 0 {
            failures.push(format!(
                "API reads: {} failures, first {:?}",
                self.api.failures, self.api.errors
            ));
        }
        if self.rooms_converged < self.rooms_checked {
            failures.push(format!(
                "{} of {} rooms converged after reloading: {:?}",
                self.rooms_converged, self.rooms_checked, self.convergence_errors
            ));
        }
        self.passed = failures.is_empty();
        self.failures = failures;
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn sample_loop(
    http: SocketAddr,
    pid: u32,
    interval: Duration,
    started: Instant,
    phase: Arc<Mutex<Phase>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    json: bool,
    mut stop: watch::Receiver<bool>,
) {
    let say = |text: String| {
        if json {
            eprintln!("{text}")
        } else {
            println!("{text}")
        }
    };
    say(format!(
        "{:>7}  {:<6} {:>6} {:>6} {:>8} {:>6} {:>6}",
        "time", "phase", "conns", "rooms", "RSS MiB", "fds", "CPU %"
    ));
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    let mut last = (
        Instant::now(),
        procstat::sample(Some(pid))
            .map(|s| s.cpu)
            .unwrap_or_default(),
    );
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let gauges = api::read_gauges(http).await.ok();
        let Ok(now) = procstat::sample(Some(pid)) else {
            say(format!("server process {pid} is gone"));
            return;
        };
        let elapsed = last.0.elapsed().as_secs_f64();
        let sample = Sample {
            t_s: started.elapsed().as_secs_f64(),
            phase: *phase.lock().expect("not poisoned"),
            connections: gauges.map(|g| g.connections),
            rooms: gauges.map(|g| g.rooms),
            rss_mib: now.rss_bytes as f64 / MIB,
            fds: procstat::open_fds(pid).unwrap_or(0),
            cpu_percent: 100.0 * now.cpu.saturating_sub(last.1).as_secs_f64() / elapsed.max(1e-3),
        };
        last = (Instant::now(), now.cpu);
        let gauge = |g: Option<u64>| g.map_or_else(|| "-".to_owned(), |v| v.to_string());
        say(format!(
            "{:>6.0}s  {:<6} {:>6} {:>6} {:>8.1} {:>6} {:>6.1}",
            sample.t_s,
            format!("{:?}", sample.phase).to_lowercase(),
            gauge(sample.connections),
            gauge(sample.rooms),
            sample.rss_mib,
            sample.fds,
            sample.cpu_percent
        ));
        samples.lock().expect("not poisoned").push(sample);
    }
}

/// The report as lines of text (`--json` prints it whole instead).
pub(super) fn print_summary(report: &SoakReport) {
    let rounds = &report.rounds;
    let (received, expected): (u64, u64) = rounds
        .iter()
        .fold((0, 0), |(r, e), x| (r + x.received, e + x.expected));
    let worst_p99 = rounds.iter().map(|r| r.p99_ms).fold(0.0, f64::max);
    let c = &report.churn;
    let m = &report.memory;
    println!();
    println!(
        "{:<22} {} rounds, {received}/{expected} deliveries, worst round p99 {worst_p99:.1} ms",
        "fan-out",
        rounds.len()
    );
    println!(
        "{:<22} {} visits, {} joins ({} checked on joining), {} left without a close frame, {} updates, {} failures",
        "churn", c.visits, c.joins, c.checked_joins, c.dropped, c.updates, c.failures
    );
    println!(
        "{:<22} {} requests, {} failures",
        "API reads", report.api.requests, report.api.failures
    );
    for (label, q) in ["quiet after warm-up", "quiet at the end"]
        .iter()
        .zip(&report.quiet_points)
    {
        println!(
            "{label:<22} {} fds, RSS {:.1} MiB (waited {:.1} s{})",
            q.fds,
            q.rss_mib,
            q.waited_s,
            if q.reached { "" } else { ", NOT quiet" }
        );
    }
    println!(
        "{:<22} baseline {:.1} MiB (max of the first {} samples after warm-up), end {:.1} MiB (max of the last {}), last {:.1} MiB: {:+.1} %",
        "RSS under load",
        m.rss_baseline_mib,
        m.window,
        m.rss_end_max_mib,
        m.window,
        m.rss_end_last_mib,
        m.rss_growth_percent
    );
    println!(
        "{:<22} {:.1} % of a core on average under load",
        "server CPU", report.mean_cpu_percent
    );
    println!(
        "{:<22} {}/{} (reloaded from storage)",
        "rooms converged", report.rooms_converged, report.rooms_checked
    );
    if report.server_log_problems > 0 {
        println!(
            "{:<22} {} warnings/errors, first: {}",
            "server log",
            report.server_log_problems,
            report.first_log_problem.as_deref().unwrap_or("")
        );
    }
    if report.passed {
        println!("{:<22} PASS", "verdict");
    } else {
        println!("{:<22} FAIL", "verdict");
        for failure in &report.failures {
            println!("  - {failure}");
        }
    }
}
