//! `/metrics` on the real binary (its own process, so the values are its
//! own): they move as clients connect, edit and leave.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{ServerProcess, YClient, http_request, sqlite_url, temp_dir};

/// The value of one sample (`name` with its labels exactly as rendered),
/// or 0 when absent.
pub async fn sample(addr: SocketAddr, series: &str) -> f64 {
    let response = http_request(addr, "GET", "/metrics", &[], vec![]).await;
    assert_eq!(response.status, 200);
    let text = String::from_utf8_lossy(&response.body).into_owned();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

async fn wait_for(addr: SocketAddr, series: &str, expected: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = sample(addr, series).await;
        if value == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {value}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_connections_edits_and_storage() {
    let dir = temp_dir();
    let server =
        ServerProcess::start(&sqlite_url(dir.path()), &["--room-idle-timeout", "300ms"]).await;
    let addr = server.addr;
    assert_eq!(sample(addr, "crdt_hub_connections").await, 0.0);

    let mut a = YClient::connect(&server.url("m")).await;
    let mut b = YClient::connect(&server.url("m")).await;
    wait_for(addr, "crdt_hub_connections", 2.0).await;
    wait_for(addr, "crdt_hub_rooms", 1.0).await;

    for i in 0..10 {
        a.insert("t", 0, &format!("{i}")).await;
    }
    b.until("ten updates", |c| c.text("t").len() == 10).await;
    wait_for(addr, "crdt_hub_updates_applied_total", 10.0).await;
    assert_eq!(
        sample(addr, "crdt_hub_messages_received_total{type=\"update\"}").await,
        10.0
    );
    // b received the ten updates, possibly merged into fewer frames when
    // they arrived together.
    assert!(sample(addr, "crdt_hub_messages_sent_total{type=\"update\"}").await >= 1.0);
    assert!(sample(addr, "crdt_hub_received_bytes_total{type=\"update\"}").await > 0.0);
    // One observation per burst the room applied together.
    let applies = sample(addr, "crdt_hub_update_apply_seconds_count").await;
    assert!((1.0..=10.0).contains(&applies), "{applies} applies");
    // One fan-out per burst the connection passed on together.
    let fanouts = sample(addr, "crdt_hub_fanout_seconds_count").await;
    assert!((1.0..=10.0).contains(&fanouts), "{fanouts} fan-outs");
    assert!(sample(addr, "crdt_hub_document_bytes").await > 0.0);
    // The journal wrote them in batches (a burst applied together is one
    // log entry).
    wait_for(addr, "crdt_hub_pending_bytes", 0.0).await;
    assert!(sample(addr, "crdt_hub_flush_batch_updates_sum").await >= applies);
    assert!(sample(addr, "crdt_hub_flush_seconds_count").await >= 1.0);

    // A protocol error is counted by its close code and reason.
    let mut bad = YClient::connect(&server.url("m")).await;
    bad.send_raw(vec![0, 2, 10, 1]).await;
    assert_eq!(bad.close_code().await, Some(1002));
    wait_for(
        addr,
        "crdt_hub_connections_closed_total{code=\"1002\",reason=\"protocol_error\"}",
        1.0,
    )
    .await;

    drop(a);
    drop(b);
    wait_for(addr, "crdt_hub_connections", 0.0).await;
    // Idle: saved (a snapshot) and unloaded.
    wait_for(addr, "crdt_hub_rooms", 0.0).await;
    assert_eq!(sample(addr, "crdt_hub_snapshots_total").await, 1.0);
    assert_eq!(sample(addr, "crdt_hub_connections_total").await, 3.0);
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_held_for_company_are_measured() {
    let dir = temp_dir();
    let server = ServerProcess::start(&sqlite_url(dir.path()), &["--fanout-window", "200ms"]).await;
    let addr = server.addr;
    let mut writer = YClient::connect(&server.url("h")).await;
    let mut observer = YClient::connect(&server.url("h")).await;
    // Edits far closer together than the window: once the room has seen
    // their pace (a few edits), it holds frames for company.
    for i in 0..20 {
        writer.insert("t", 0, &format!("{}", i % 10)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    observer
        .until("every edit", |c| c.text("t").chars().count() == 20)
        .await;
    let held = sample(addr, "crdt_hub_fanout_hold_seconds_count").await;
    assert!(held >= 1.0, "{held} held batches");
    // Each waited more than nothing and at most the window (plus the
    // timer's rounding to whole milliseconds).
    let waited = sample(addr, "crdt_hub_fanout_hold_seconds_sum").await;
    assert!(
        waited > 0.0 && waited <= held * 0.202,
        "{held} batches held {waited} s in all"
    );
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}
