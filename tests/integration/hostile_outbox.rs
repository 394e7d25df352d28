//! Readers that take frames more slowly than their room makes them (issue
//! 27, item 7), against the real binary: a peer is closed once the bytes
//! waiting for it pass `--max-queued-bytes`, or once a write blocks past
//! `--write-timeout`, and each close is counted by its reason. Loopback
//! only, bounded in size and time.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::metrics::sample;
use crate::support::{Bystanders, ServerProcess, YClient, http_request, sqlite_url, temp_dir};

/// The server's resident memory in MiB.
fn rss_mib(server: &ServerProcess) -> u64 {
    server.rss_kib() >> 10
}

async fn connections(server: &ServerProcess, room: &str) -> u64 {
    let info = http_request(
        server.addr,
        "GET",
        &format!("/api/rooms/{room}"),
        &[],
        vec![],
    )
    .await;
    info.json()["connections"].as_u64().unwrap()
}

/// Writes 1 MB edits, `per_second` a second, until `done` says so or
/// `limit` passes; the watcher must keep up with every one. Returns how
/// many were written.
async fn write_megabytes_until(
    server: &ServerProcess,
    writer: &mut YClient,
    watcher: &mut YClient,
    per_second: u32,
    limit: Duration,
    done: &str,
) -> usize {
    let chunk = "m".repeat(1 << 20);
    let started = Instant::now();
    let mut written = 0;
    while sample(server.addr, done).await < 1.0 {
        assert!(started.elapsed() < limit, "{done} never moved");
        writer.insert("t", 0, &chunk).await;
        written += 1;
        let expected = written * chunk.len();
        watcher
            .until("the edit", |c| c.text("t").len() == expected)
            .await;
        tokio::time::sleep(Duration::from_secs(1) / per_second).await;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_draining_slower_than_its_room_is_closed_by_bytes() {
    let dir = temp_dir();
    let server = ServerProcess::start(
        &sqlite_url(dir.path()),
        &[
            "--max-message-size",
            "2MiB",
            "--max-queued-bytes",
            "4MiB",
            // The writer is not what this is about.
            "--rate-bytes",
            "64MiB",
        ],
    )
    .await;
    let room = "drain";
    let mut writer = YClient::connect(&server.url(room)).await;
    let mut watcher = YClient::connect(&server.url(room)).await;
    let mut slow = YClient::connect(&server.url(room)).await;
    let start_rss = rss_mib(&server);
    let stop_bystanders = tokio_util::sync::CancellationToken::new();
    let bystanders = tokio::spawn(
        Bystanders::join(&server.url("bystanders"))
            .await
            .edit_until(stop_bystanders.clone()),
    );

    // Reads on, at 300 KB/s, until its stream ends.
    let draining = tokio::spawn(async move {
        let mut read = 0usize;
        while let Some(Ok(message)) = slow.ws.next().await {
            let len = message.len();
            read += len;
            if let Message::Close(frame) = message {
                return (read, frame.map(|f| u16::from(f.code)));
            }
            tokio::time::sleep(Duration::from_secs_f64(len as f64 / 300_000.0)).await;
        }
        (read, None)
    });
    let written = write_megabytes_until(
        &server,
        &mut writer,
        &mut watcher,
        4,
        Duration::from_secs(30),
        "crdt_hub_connections_closed_total{code=\"1013\",reason=\"slow_consumer\"}",
    )
    .await;
    let peak_rss = rss_mib(&server);
    stop_bystanders.cancel();
    bystanders.await.unwrap().assert_kept_syncing();
    eprintln!(
        "slow reader closed after {written} MB written; server RSS {start_rss} -> {peak_rss} MiB"
    );
    // The others carry on; the writer and the watcher are still there.
    assert_eq!(connections(&server, room).await, 2);
    writer.insert("t", 0, "after").await;
    watcher
        .until("an edit after the eviction", |c| {
            c.text("t").starts_with("after")
        })
        .await;
    // Closed once 4 MiB waited for it (the rest of what it missed was in
    // the kernel's socket buffers), not after 2,048 frames (2 GB).
    assert!(
        written < 64,
        "{written} MB written before the slow reader was closed"
    );
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
    assert!(logs.contains("peer too slow"), "{logs}");
    draining.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_dropped_after_the_write_timeout_and_counted() {
    let dir = temp_dir();
    let server = ServerProcess::start(
        &sqlite_url(dir.path()),
        &[
            "--write-timeout",
            "1s",
            "--max-message-size",
            "2MiB",
            // Large enough that the queue never fills first.
            "--max-queued-bytes",
            "1GiB",
            "--rate-bytes",
            "64MiB",
        ],
    )
    .await;
    let room = "stopped";
    let mut writer = YClient::connect(&server.url(room)).await;
    let mut watcher = YClient::connect(&server.url(room)).await;
    let _stopped = YClient::connect(&server.url(room)).await; // never reads
    write_megabytes_until(
        &server,
        &mut writer,
        &mut watcher,
        8,
        Duration::from_secs(30),
        "crdt_hub_connections_closed_total{code=\"1006\",reason=\"write_timeout\"}",
    )
    .await;
    assert_eq!(connections(&server, room).await, 2);
    assert_eq!(
        sample(
            server.addr,
            "crdt_hub_connections_closed_total{code=\"1013\",reason=\"slow_consumer\"}"
        )
        .await,
        0.0
    );
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}
