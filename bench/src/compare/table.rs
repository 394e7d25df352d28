//! The markdown tables: medians per server and crdt-hub/peer ratios.

use std::fmt::Write as _;

use super::Results;
use crate::fanout;
use crate::stats::median;

/// Median of one metric for one server over the rounds.
pub(super) fn column_median(results: &Results, server: usize, name: &str) -> f64 {
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
pub(super) fn render(results: &Results) -> String {
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
    let hub = results.servers.iter().position(|s| s.is_crdt_hub());
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
    if let Some(hub) = hub {
        for &p in &peers {
            let _ = write!(
                out,
                " {} / {} |",
                results.servers[hub].name(),
                results.servers[p].name()
            );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Measured;
    use crate::servers::ServerKind;
    use crate::stats::metric;

    fn run(p99: f64) -> Option<Measured> {
        Some(Measured {
            metrics: vec![metric("p99 ms", p99)],
            report: serde_json::Value::Null,
        })
    }

    #[test]
    fn ratios_are_to_crdt_hub_over_either_protocol() {
        let results = Results {
            title: "t".into(),
            servers: vec![
                ServerKind::CrdtHubHp,
                ServerKind::Hocuspocus,
                ServerKind::Hocuspocus4,
            ],
            runs: vec![vec![run(2.0), run(8.0), run(4.0)]],
            notes: Vec::new(),
        };
        let table = render(&results);
        assert!(
            table.contains(
                "| crdt-hub-hp | hocuspocus | hocuspocus4 | crdt-hub-hp / hocuspocus | crdt-hub-hp / hocuspocus4 |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| p99 ms | 2.00 | 8.00 | 4.00 | 0.250 | 0.500 |"),
            "{table}"
        );
    }
}
