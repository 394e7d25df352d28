//! Stored data with gaps, and failures that used to pass for success: a
//! database written before held updates were kept apart (its snapshot
//! holds an update whose first part never arrived) serves its complete
//! content with no manual step; `snapshot check` says what waits and what
//! does not load; a restore that cannot be computed fails loudly.

use base64::Engine;
use serde_json::Value;
use yrs::{Map, Transact};

use crate::snapshot_cli::{Db, snapshot_cli};
use crate::support::{ServerOptions, TestServer, YClient, http_request};

/// The fixture (see `fixtures/README.md`), copied: opening migrates it.
fn gapped_fixture() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/integration/fixtures/gapped-snapshot.db"
        ),
        &path,
    )
    .unwrap();
    (dir, format!("sqlite://{}", path.display()))
}

/// The update of client 777777 the fixture's gap waits for ("AB").
const MISSING_FIRST_PART: &str = "AQGxvC8ABAEEdGV4dAJBQgA=";

fn json_of(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn a_database_whose_snapshot_holds_a_gap_serves_everything_after_the_upgrade() {
    let (_dir, url) = gapped_fixture();

    let check = snapshot_cli(&url, &["check", "--json"]).await;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let report = json_of(&check);
    let rooms: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert_eq!(rooms, ["fine", "poisoned"]);
    let poisoned = &report[1];
    assert_eq!(poisoned["loads"], true);
    assert_eq!(
        poisoned["waiting"][0]["needs"],
        serde_json::json!([{"client": 777777, "clock": 2}])
    );
    assert_eq!(report[0]["waiting"], serde_json::json!([]));

    let server = TestServer::start_with(ServerOptions {
        database_url: Some(url.clone()),
        ..ServerOptions::default()
    })
    .await;
    let mut client = YClient::connect(&server.url("poisoned")).await;
    client
        .until("the stored content", |c| c.text("text") == "hello world")
        .await;
    let status = {
        let map = client.doc().get_or_insert_map("map");
        let txn = client.doc().transact();
        map.get(&txn, "status").map(|v| v.to_string(&txn))
    };
    assert_eq!(status.as_deref(), Some("draft"));

    // The first part arrives: the waiting part joins at once.
    let first = base64::engine::general_purpose::STANDARD
        .decode(MISSING_FIRST_PART)
        .unwrap();
    let response = http_request(
        server.addr,
        "POST",
        "/api/rooms/poisoned/update",
        &[],
        first,
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["complete"], true);
    client
        .until("the waiting part", |c| c.text("text").contains("ABCD"))
        .await;
    let info = http_request(server.addr, "GET", "/api/rooms/poisoned", &[], vec![]).await;
    assert_eq!(
        info.json()["held"],
        serde_json::json!({"updates": 0, "bytes": 0})
    );
    server.stop().await;
}

#[tokio::test]
async fn snapshot_check_fails_for_a_room_that_does_not_load() {
    let db = Db::sqlite().await;
    let store = db.store().await;
    let room = crdt_store::RoomName::parse("broken").unwrap();
    store
        .append(&[crdt_store::PendingUpdate {
            room: room.clone(),
            data: bytes::Bytes::from_static(&[0xff, 0xff, 0xff]),
        }])
        .await
        .unwrap();
    let check = snapshot_cli(db.url(), &["check", "--json"]).await;
    assert!(!check.status.success(), "a room that does not load passed");
    let report = json_of(&check);
    assert_eq!(report[0]["loads"], false);
    assert!(
        report[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not load"),
        "{report}"
    );
    let table = snapshot_cli(db.url(), &["check"]).await;
    assert!(!table.status.success());
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(
        stdout.contains("broken") && stdout.contains("NO"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&table.stderr).contains("1 of 1 room(s) do not load"));
}

#[tokio::test]
async fn a_restore_that_cannot_be_computed_is_a_failure() {
    let db = Db::sqlite().await;
    let server = TestServer::start_with(ServerOptions {
        database_url: Some(db.url().to_string()),
        ..ServerOptions::default()
    })
    .await;
    let mut client = YClient::connect(&server.url("notes")).await;
    client.insert("text", 0, "version one").await;
    server_has_text(&server, "notes", "version one").await;
    let version = snapshot_now(&server, "notes").await;
    client.insert("text", 0, "then ").await;
    server_has_text(&server, "notes", "then version one").await;
    // The latest version stays sound: only the one restored is damaged.
    snapshot_now(&server, "notes").await;

    // The version's stored state is damaged under the store.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    sqlx::query("UPDATE snapshots SET state = x'ffffff' WHERE id = ?1")
        .bind(version)
        .execute(&mut conn)
        .await
        .unwrap();

    let body = serde_json::json!({ "version": version })
        .to_string()
        .into_bytes();
    let restore = http_request(
        server.addr,
        "POST",
        "/api/rooms/notes/restore",
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(restore.status, 500, "{:?}", restore.body);
    let error = restore.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("does not load"), "{error}");
    assert_eq!(client.text("text"), "then version one", "nothing changed");

    let cli = snapshot_cli(
        db.url(),
        &[
            "restore",
            "notes",
            "--version",
            &version.to_string(),
            "--server",
            &format!("http://{}", server.addr),
        ],
    )
    .await;
    assert!(
        !cli.status.success(),
        "the CLI reported a failed restore as done"
    );
    assert!(String::from_utf8_lossy(&cli.stderr).contains("does not load"));
    server.stop().await;
}

/// Waits until the room's text, as the server has it, is `text`.
async fn server_has_text(server: &TestServer, room: &str, text: &str) {
    for _ in 0..100 {
        let json = http_request(
            server.addr,
            "GET",
            &format!("/api/rooms/{room}/json"),
            &[],
            vec![],
        )
        .await;
        if json.status == 200 && json.json()["text"] == text {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the server never had {text:?} in room {room}");
}

/// Writes a version of `room` now; returns its id.
async fn snapshot_now(server: &TestServer, room: &str) -> i64 {
    crate::support::snapshot_now(server.addr, room).await
}
