//! Room lifecycle: created once, unloaded when idle, slow peers closed.

use std::time::Duration;

use crdt_hub::connection::ConnectionConfig;
use crdt_hub::room::RoomConfig;
use futures_util::future::join_all;

use crate::support::{ServerOptions, TestServer, YClient};

#[tokio::test]
async fn many_clients_joining_a_cold_room_at_once_converge() {
    let server = TestServer::start().await;
    let url = server.url("cold");
    let mut clients = join_all((0..40).map(|_| YClient::connect(&url))).await;
    for (i, client) in clients.iter_mut().enumerate() {
        client.insert("t", 0, &format!("<{i}>")).await;
    }
    let expected_len: usize = (0..40).map(|i| format!("<{i}>").len()).sum();
    for client in &mut clients {
        client
            .until("every insert", |c| c.text("t").len() == expected_len)
            .await;
    }
    let first = clients[0].text("t");
    for client in &clients {
        assert_eq!(client.text("t"), first);
    }
    for i in 0..40 {
        assert_eq!(first.matches(&format!("<{i}>")).count(), 1);
    }
    // Checked once every client is in (a finished handshake does not mean
    // the connection has joined its room yet).
    assert_eq!(server.app.rooms.len(), 1, "one room, created once");
    server.stop().await;
}

#[tokio::test]
async fn a_fanout_window_holds_frames_but_delivers_every_edit() {
    // A window far longer than the gaps in the typing below: once the room
    // has seen its pace (a few edits), it holds frames for company.
    let server = TestServer::start_with(ServerOptions {
        room: RoomConfig {
            fanout_window: Duration::from_millis(40),
            ..RoomConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let url = server.url("window");
    let mut writers = join_all((0..3).map(|_| YClient::connect(&url))).await;
    let mut observer = YClient::connect(&url).await;
    for round in 0..20 {
        for (i, writer) in writers.iter_mut().enumerate() {
            writer
                .insert("t", 0, &format!("{}", (round + i) % 10))
                .await;
        }
    }
    observer
        .until("every edit", |c| c.text("t").chars().count() == 60)
        .await;
    for writer in &mut writers {
        writer
            .until("every edit", |c| c.text("t").chars().count() == 60)
            .await;
    }
    let text = observer.text("t");
    for writer in &writers {
        assert_eq!(writer.text("t"), text);
    }
    // A newcomer's greeting and the frames still held must not disagree.
    let mut late = YClient::connect(&url).await;
    writers[0].insert("t", 0, "!").await;
    late.until("the document and the edit after it", |c| {
        c.text("t").chars().count() == 61
    })
    .await;
    observer
        .until("the last edit", |c| c.text("t").chars().count() == 61)
        .await;
    assert_eq!(late.text("t"), observer.text("t"));
    server.stop().await;
}

#[tokio::test]
async fn idle_rooms_are_saved_unloaded_and_reloaded() {
    let server = TestServer::start_with(ServerOptions {
        room: RoomConfig {
            idle_timeout: Duration::from_millis(200),
            ..RoomConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let mut a = YClient::connect(&server.url("idle")).await;
    a.insert("t", 0, "kept").await;
    let mut b = YClient::connect(&server.url("idle")).await;
    b.until("kept", |c| c.text("t") == "kept").await;
    drop(a);
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.app.rooms.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "room never unloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = YClient::connect(&server.url("idle")).await;
    c.until("content after reload", |c| c.text("t") == "kept")
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_slow_reader_is_closed_with_1013_and_the_room_carries_on() {
    let server = TestServer::start_with(ServerOptions {
        connection: ConnectionConfig {
            outbox_capacity: 64,
            // The evicted reader's connection stays blocked writing until
            // the test reads at the end; on a loaded machine the bursts
            // take longer than the default 10 s, and a timed-out write
            // would end it without the close frame this test looks for.
            write_timeout: Duration::from_secs(120),
            ..ConnectionConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let url = server.url("slow");
    let mut slow = YClient::connect(&url).await; // never reads until the end
    let mut writer = YClient::connect(&url).await;
    let mut watcher = YClient::connect(&url).await;
    let chunk = "x".repeat(64 * 1024);
    // The writer sends in bursts of 16 and waits for the watcher to have
    // each burst: a client that keeps reading is never closed, however
    // much flows, while the one that stops reading is.
    let text = watcher.doc().get_or_insert_text("t");
    let length = move |c: &YClient| {
        use yrs::{Text, Transact};
        text.len(&c.doc().transact()) as usize
    };
    for burst in 1..=25usize {
        for _ in 0..16 {
            writer.insert("t", 0, &chunk).await;
        }
        let expected = burst * 16 * chunk.len();
        watcher.until("the burst", |c| length(c) == expected).await;
    }
    assert_eq!(slow.close_code().await, Some(1013));

    // It reconnects with its doc and resyncs.
    let doc = slow.doc().clone();
    let mut again = YClient::connect_with_doc(&url, doc).await;
    let total = 25 * 16 * chunk.len();
    again
        .until("full resync", |c| c.text("t").len() == total)
        .await;
    server.stop().await;
}

/// Small frames are written by the room straight to the socket until it
/// pushes back; then the tail of a frame cut short waits in the socket and
/// later frames queue. A reader that stalls for megabytes and then resumes
/// must get every edit over an intact stream (interleaved frames would
/// close it), without being taken for a slow consumer.
#[tokio::test]
async fn a_reader_that_stalls_then_resumes_gets_every_frame_intact() {
    let server = TestServer::start_with(ServerOptions::unthrottled()).await;
    let url = server.url("stall");
    let room = crdt_store::RoomName::parse("stall").unwrap();
    let mut stalled = YClient::connect(&url).await;
    let mut writer = YClient::connect(&url).await;
    let mut watcher = YClient::connect(&url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.app.rooms.connections(&room) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = watcher.doc().get_or_insert_text("t");
    let length = move |c: &YClient| {
        use yrs::{Text, Transact};
        text.len(&c.doc().transact()) as usize
    };
    // 8 MB in 8 KiB edits, far more than loopback buffers hold for a
    // socket nobody reads; one at a time, so that each stays a frame of
    // its own (a burst would be merged into frames too big to write
    // directly) and the socket fills up in the middle of one.
    let chunk = "y".repeat(8 * 1024 - 7);
    let edits = 1000;
    for edit in 1..=edits {
        writer.insert("t", 0, &chunk).await;
        watcher
            .until("the edit", |c| length(c) == edit * chunk.len())
            .await;
    }
    let total = edits * chunk.len();
    stalled
        .until("every edit", |c| c.text("t").len() == total)
        .await;
    assert_eq!(server.app.rooms.connections(&room), 3, "nobody was closed");
    server.stop().await;
}

#[tokio::test]
async fn silent_connections_are_pinged_then_closed() {
    let server = TestServer::start_with(ServerOptions {
        connection: ConnectionConfig {
            keepalive_interval: Duration::from_millis(200),
            ..ConnectionConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let room = crdt_store::RoomName::parse("keepalive").unwrap();
    // Never read: its WebSocket layer never answers the server's pings.
    let (_silent, _) = tokio_tungstenite::connect_async(server.url("keepalive"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.app.rooms.connections(&room) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = tokio::time::Instant::now();
    while server.app.rooms.connections(&room) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(5),
            "a silent connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two keepalive intervals of silence, give or take a tick.
    assert!(
        joined.elapsed() >= Duration::from_millis(300),
        "{:?}",
        joined.elapsed()
    );
    server.stop().await;
}
