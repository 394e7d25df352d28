//! The saturation search: per server, the highest fan-out rate that still
//! meets the target (p99 within 50 ms, 99 % delivered).

use std::time::Duration;

use serde_json::json;

use super::table::{column_median, fmt};
use super::{Harness, Plan, Results, fanout_run};
use crate::fanout;
use crate::servers::ServerKind;

impl Harness {
    /// Per server: the highest fan-out rate whose p99 stays within 50 ms
    /// with 99 % delivered. Starts from the fixed-rate medians, climbs the
    /// ladder until a rate fails, then bisects twice between the last
    /// passing and the first failing rate.
    pub(super) async fn saturation(&mut self, plan: &Plan, fixed: &[(f64, Results)]) {
        let mut lines = vec![
            format!("## saturation: 200 clients, 20 rooms; highest rate with p99 ≤ 50 ms and delivery ≥ 99 %{}\n", self.title_suffix),
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
