//! SIGTERM on the real binary: connections get 1001, rooms are written,
//! the process exits 0, and the content is there after a restart.

use crate::support::{ServerProcess, YClient, sqlite_url, temp_dir};

#[tokio::test]
async fn sigterm_saves_every_room_and_a_restart_finds_it() {
    let dir = temp_dir();
    let url = sqlite_url(dir.path());
    let server = ServerProcess::start(&url, &["--room-idle-timeout", "1h"]).await;
    let mut a = YClient::connect(&server.url("kept/one")).await;
    let mut b = YClient::connect(&server.url("kept/two")).await;
    a.insert("t", 0, "first room").await;
    b.insert("t", 0, "second room").await;
    // Make sure the server has applied both (a round trip per client).
    let mut check_a = YClient::connect(&server.url("kept/one")).await;
    check_a.until("a", |c| c.text("t") == "first room").await;
    let mut check_b = YClient::connect(&server.url("kept/two")).await;
    check_b.until("b", |c| c.text("t") == "second room").await;

    let terminate = tokio::spawn(server.terminate());
    assert_eq!(a.close_code().await, Some(1001));
    let (status, logs) = terminate.await.unwrap();
    assert!(status.success(), "exit status {status:?}\n{logs}");
    assert!(
        logs.contains("every accepted update is in storage"),
        "{logs}"
    );

    let server = ServerProcess::start(&url, &[]).await;
    let mut a = YClient::connect(&server.url("kept/one")).await;
    a.until("first room after restart", |c| c.text("t") == "first room")
        .await;
    let mut b = YClient::connect(&server.url("kept/two")).await;
    b.until("second room after restart", |c| {
        c.text("t") == "second room"
    })
    .await;
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}

#[tokio::test]
async fn migrate_creates_the_schema_and_exits() {
    let dir = temp_dir();
    let url = sqlite_url(dir.path());
    for _ in 0..2 {
        // Twice: applying already-applied migrations is a no-op.
        let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_crdt-hub-under-test"))
            .args(["migrate", "--database-url", &url])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }
    let store = crdt_store::connect_without_migrating(&url).await.unwrap();
    assert!(store.rooms().await.unwrap().is_empty(), "tables exist");
}
