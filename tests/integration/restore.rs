//! Live restore: `POST /api/rooms/{room}/restore` (and the CLI's
//! `--server`) on a room with connected clients, on SQLite and Postgres.
//! The clients converge to the version without reconnecting, the restore
//! can be undone, and an edit made concurrently with it survives.

use std::sync::Arc;

use serde_json::{Value, json};
use yrs::types::Attrs;
use yrs::updates::decoder::Decode;
use yrs::{Any, Doc, Map, Text, Transact, Update};

use crate::snapshot_cli::{Db, fingerprint, ok, snapshot_cli};
use crate::support::{ServerOptions, TestServer, YClient, http_request};

async fn start(db: &Db) -> TestServer {
    TestServer::start_with(ServerOptions {
        database_url: Some(db.url().to_string()),
        ..ServerOptions::default()
    })
    .await
}

async fn post_json(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = http_request(
        server.addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().into_bytes(),
    )
    .await;
    (response.status, response.json())
}

/// Writes a snapshot through the API; returns its id.
async fn snapshot(server: &TestServer, room: &str) -> i64 {
    crate::support::snapshot_now(server.addr, room).await
}

/// The content of a stored version.
async fn version_doc(db: &Db, room: &str, id: i64) -> Doc {
    let store = db.store().await;
    let snapshot = store
        .snapshot(&crdt_store::RoomName::parse(room).unwrap(), id)
        .await
        .unwrap()
        .unwrap();
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&snapshot.state).unwrap())
        .unwrap();
    doc
}

fn bold() -> Attrs {
    Attrs::from([(Arc::from("bold"), Any::Bool(true))])
}

/// Alice writes a first version, which is snapshotted; then she changes
/// the text, its formatting and the map. Returns the version's id.
async fn write_history(
    server: &TestServer,
    alice: &mut YClient,
    bob: &mut YClient,
    room: &str,
) -> i64 {
    let text = alice.doc().get_or_insert_text("t");
    let map = alice.doc().get_or_insert_map("m");
    alice
        .edit(|txn| {
            text.insert(txn, 0, "the first version");
            text.format(txn, 4, 5, bold());
            map.insert(txn, "status", "draft");
        })
        .await;
    bob.until("the first version", |c| c.text("t") == "the first version")
        .await;
    let v1 = snapshot(server, room).await;
    alice
        .edit(|txn| {
            text.remove_range(txn, 0, 4);
            text.insert(txn, 13, ", rewritten");
            text.format(txn, 0, 5, Attrs::from([(Arc::from("bold"), Any::Null)]));
            map.insert(txn, "status", "final");
            map.insert(txn, "extra", 1);
        })
        .await;
    let expected = alice.text("t");
    bob.until("the later edits", |c| c.text("t") == expected)
        .await;
    v1
}

async fn live_restore_reaches_clients_and_can_be_undone(db: &Db) {
    let server = start(db).await;
    let room = "live-restore";
    let mut alice = YClient::connect(&server.url(room)).await;
    let mut bob = YClient::connect(&server.url(room)).await;
    let v1 = write_history(&server, &mut alice, &mut bob, room).await;
    let later = fingerprint(alice.doc());

    // The CLI through --server.
    let server_url = format!("http://{}", server.addr);
    let out = ok(&snapshot_cli(
        db.url(),
        &[
            "restore",
            room,
            "--version",
            &v1.to_string(),
            "--server",
            &server_url,
        ],
    )
    .await);
    let before: i64 = out
        .split("before:   version ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no before id in {out}"));

    // Both clients show exactly the version, formatting included.
    let version = fingerprint(&version_doc(db, room, v1).await);
    for client in [&mut alice, &mut bob] {
        client
            .until("the restored version", |c| fingerprint(c.doc()) == version)
            .await;
    }
    assert_eq!(alice.text("t"), "the first version");

    // The history records the restore.
    let versions = http_request(
        server.addr,
        "GET",
        &format!("/api/rooms/{room}/snapshots"),
        &[],
        vec![],
    )
    .await
    .json();
    assert_eq!(versions[0]["restored_from"], v1, "{versions}");
    assert_eq!(versions[1]["id"], before, "{versions}");
    assert_eq!(fingerprint(&version_doc(db, room, before).await), later);

    // Undo through the API: restore the state before the restore.
    let (status, answer) = post_json(
        &server,
        &format!("/api/rooms/{room}/restore"),
        json!({ "version": before }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], true);
    for client in [&mut alice, &mut bob] {
        client
            .until("the undone restore", |c| fingerprint(c.doc()) == later)
            .await;
    }
    server.stop().await;
}

async fn an_edit_made_during_the_restore_survives(db: &Db) {
    let server = start(db).await;
    let room = "concurrent-restore";
    let mut alice = YClient::connect(&server.url(room)).await;
    let mut bob = YClient::connect(&server.url(room)).await;
    let v1 = write_history(&server, &mut alice, &mut bob, room).await;

    // Bob types without having heard of the restore: his client does not
    // read its socket while the restore happens, like one whose network
    // lags. His edit is concurrent with the restore.
    let (status, answer) = post_json(
        &server,
        &format!("/api/rooms/{room}/restore"),
        json!({ "version": v1 }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    bob.insert("t", 0, "BOB TYPED THIS ").await;

    // Where exactly the two inserts at the start land is the CRDT's
    // (client id) order; that both are there is the point.
    let merged = |c: &YClient| {
        let text = c.text("t");
        text.contains("BOB TYPED THIS ")
            && text.replacen("BOB TYPED THIS ", "", 1) == "the first version"
    };
    for client in [&mut alice, &mut bob] {
        client
            .until("the restore merged with bob's edit", merged)
            .await;
    }
    assert_eq!(alice.text("t"), bob.text("t"));
    server.stop().await;
}

async fn restore_errors_and_into(db: &Db) {
    let server = start(db).await;
    let room = "errors";
    let mut alice = YClient::connect(&server.url(room)).await;
    let mut bob = YClient::connect(&server.url(room)).await;
    let v1 = write_history(&server, &mut alice, &mut bob, room).await;

    let path = format!("/api/rooms/{room}/restore");
    let (status, _) = post_json(&server, &path, json!({ "version": 987654 })).await;
    assert_eq!(status, 404);
    let (status, _) = post_json(&server, "/api/rooms/nope/restore", json!({ "version": v1 })).await;
    assert_eq!(status, 404);
    let (status, _) = post_json(&server, &path, json!({ "versoin": v1 })).await;
    assert_eq!(status, 400);
    let (status, _) = post_json(&server, &path, json!({ "version": v1, "into": "" })).await;
    assert_eq!(status, 400);

    // Into another room, which a client watches.
    let mut carol = YClient::connect(&server.url("copy")).await;
    let (status, answer) =
        post_json(&server, &path, json!({ "version": v1, "into": "copy" })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["room"], "copy");
    carol
        .until("the version in the other room", |c| {
            c.text("t") == "the first version"
        })
        .await;
    // The source room is untouched.
    assert_ne!(alice.text("t"), "the first version");
    server.stop().await;
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Db::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Db::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    live_restore_reaches_clients_and_can_be_undone,
    an_edit_made_during_the_restore_survives,
    restore_errors_and_into,
);
