//! `crdt-hub snapshot …` end to end: the real binary against real SQLite
//! and Postgres databases (and a running server for `--server`).

use std::process::{Output, Stdio};
use std::sync::Arc;

use crdt_hub::snapshot::{BACKUP_FORMAT, Backup};
use crdt_store::{PendingUpdate, RoomName, SnapshotId, Store};
use serde_json::Value;
use yrs::types::Attrs;
use yrs::types::text::YChange;
use yrs::types::xml::{XmlElementPrelim, XmlTextPrelim};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact, Update, WriteTxn, Xml,
    XmlFragment,
};

use crate::support::{PostgresDb, ServerOptions, TestServer, YClient, stored_doc};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A database for one test: an SQLite file in a temp dir, or a fresh
/// Postgres database.
pub enum Db {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres(PostgresDb),
}

impl Db {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        crdt_store::connect(&url).await.unwrap(); // creates the file
        Db::Sqlite { _dir: dir, url }
    }

    pub async fn postgres() -> Self {
        Db::Postgres(PostgresDb::create().await)
    }

    pub fn url(&self) -> &str {
        match self {
            Db::Sqlite { url, .. } => url,
            Db::Postgres(db) => &db.url,
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        crdt_store::connect(self.url()).await.unwrap()
    }

    /// A scratch directory for files.
    pub fn dir(&self) -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}

/// Runs `crdt-hub snapshot ARGS --database-url URL` to completion.
pub async fn snapshot_cli(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_crdt-hub-under-test"))
        .arg("snapshot")
        .args(args)
        .args(["--database-url", url])
        .env_remove("CRDT_HUB_SERVER")
        .env_remove("DATABASE_URL")
        .env_remove("CRDT_HUB_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run crdt-hub snapshot")
}

/// Asserts success and returns stdout.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts a failure whose stderr mentions `needle`; returns stderr.
fn fails_with(output: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "expected a failure mentioning {needle:?}, got success: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains(needle),
        "stderr does not mention {needle:?}: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

fn bold() -> Attrs {
    Attrs::from([(Arc::from("bold"), Any::Bool(true))])
}

/// A document with some of everything: formatted text with an embed,
/// nested maps, an array, XML with attributes and formatted XML text.
pub fn rich_doc(text: &str) -> Doc {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        let t = txn.get_or_insert_text("t");
        t.insert(&mut txn, 0, text);
        t.format(&mut txn, 0, 1, bold());
        t.insert_embed(&mut txn, 1, Any::from(vec![Any::from("embed")]));
        let m = txn.get_or_insert_map("m");
        m.insert(&mut txn, "n", 1);
        let inner = m.insert(&mut txn, "inner", MapPrelim::default());
        inner.insert(&mut txn, "deep", "yes");
        let a = txn.get_or_insert_array("a");
        a.insert_range(&mut txn, 0, [1, 2, 3]);
        let x = txn.get_or_insert_xml_fragment("x");
        let p = x.push_back(&mut txn, XmlElementPrelim::empty("p"));
        p.insert_attribute(&mut txn, "level", Any::from(2));
        let xt = p.push_back(&mut txn, XmlTextPrelim::new("xml text"));
        xt.format(&mut txn, 0, 3, bold());
    }
    doc
}

fn state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// The update that takes `from` to `to` (an edit made after `from`).
fn diff(to: &Doc, from: &Doc) -> Vec<u8> {
    to.transact()
        .encode_state_as_update_v1(&from.transact().state_vector())
}

/// Every way the tests compare documents: JSON as the server renders it,
/// and the Y.Text delta with formatting.
pub fn fingerprint(doc: &Doc) -> (Value, String) {
    let json = crdt_hub::doc_json::doc_to_json(doc);
    let text = doc.get_or_insert_text("t");
    let delta = text.diff(&doc.transact(), YChange::identity);
    (json, format!("{delta:?}"))
}

fn load(bytes: &[u8]) -> Doc {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(bytes).unwrap())
        .unwrap();
    doc
}

/// Stores a room with two versions and a log entry after the second:
/// returns (v1, v2) and the documents at v1 and now.
async fn seed_history(store: &Arc<dyn Store>, name: &str) -> (SnapshotId, SnapshotId, Doc, Doc) {
    let room = room(name);
    let doc = rich_doc("first version");
    let v1_doc = load(&state(&doc));
    store
        .append(&[PendingUpdate {
            room: room.clone(),
            data: state(&doc).into(),
        }])
        .await
        .unwrap();
    let v1 = crdt_hub::persist::write_snapshot(store, &room, &state(&doc), None, 20, None)
        .await
        .unwrap()
        .id;
    let before = load(&state(&doc));
    {
        let t = doc.get_or_insert_text("t");
        let m = doc.get_or_insert_map("m");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, "second: ");
        t.format(&mut txn, 2, 4, bold());
        m.insert(&mut txn, "n", 2);
    }
    let v2 = crdt_hub::persist::write_snapshot(store, &room, &state(&doc), None, 20, None)
        .await
        .unwrap()
        .id;
    // A log entry not yet in any version.
    let before_tail = load(&state(&doc));
    {
        let a = doc.get_or_insert_array("a");
        let mut txn = doc.transact_mut();
        a.push_back(&mut txn, "tail");
    }
    store
        .append(&[PendingUpdate {
            room: room.clone(),
            data: diff(&doc, &before_tail).into(),
        }])
        .await
        .unwrap();
    drop(before);
    (v1, v2, v1_doc, load(&state(&doc)))
}

// ---------------------------------------------------------------------------
// The cases, run on both backends
// ---------------------------------------------------------------------------

async fn rooms_and_versions_as_tables_and_json(db: &Db) {
    let store = db.store().await;
    let (v1, v2, _, _) = seed_history(&store, "notes").await;
    seed_history(&store, "team/plans é").await;

    let rooms = json_of(&ok(&snapshot_cli(db.url(), &["rooms", "--json"]).await));
    let rooms = rooms.as_array().unwrap();
    assert_eq!(rooms.len(), 2, "{rooms:?}");
    for entry in rooms {
        assert!(entry["room"].is_string());
        assert!(is_rfc3339(&entry["updated_at"]), "{entry}");
        assert_eq!(entry["snapshots"], 2);
        assert!(entry["size"].as_i64().unwrap() > 0);
        assert!(entry["updates"].is_i64());
    }
    assert!(rooms.iter().any(|r| r["room"] == "team/plans é"));

    let table = ok(&snapshot_cli(db.url(), &["rooms"]).await);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ROOM") && header.contains("VERSIONS"),
        "{table}"
    );
    assert!(
        table.contains("notes") && table.contains("team/plans é"),
        "{table}"
    );

    let versions = json_of(&ok(
        &snapshot_cli(db.url(), &["list", "notes", "--json"]).await
    ));
    let versions = versions.as_array().unwrap();
    let ids: Vec<i64> = versions.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [v2, v1], "newest first");
    for v in versions {
        assert_eq!(v["room"], "notes");
        assert!(is_rfc3339(&v["created_at"]), "{v}");
        assert!(v["size"].as_i64().unwrap() > 0);
        assert!(v["updates"].is_i64());
        assert!(v["restored_from"].is_null());
    }
    let table = ok(&snapshot_cli(db.url(), &["list", "notes"]).await);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&v1.to_string()) && table.contains("RESTORED FROM"),
        "{table}"
    );
}

async fn export_in_every_format(db: &Db) {
    let store = db.store().await;
    let (v1, _, v1_doc, now_doc) = seed_history(&store, "notes").await;
    let dir = db.dir();
    let file = |name: &str| dir.path().join(name).display().to_string();

    // ybin of a version: exactly the stored state.
    let v1_state = store
        .snapshot(&room("notes"), v1)
        .await
        .unwrap()
        .unwrap()
        .state;
    ok(&snapshot_cli(
        db.url(),
        &[
            "export",
            "notes",
            "--version",
            &v1.to_string(),
            "-o",
            &file("v1.ybin"),
        ],
    )
    .await);
    let bytes = std::fs::read(file("v1.ybin")).unwrap();
    assert_eq!(bytes, v1_state);
    assert_eq!(fingerprint(&load(&bytes)), fingerprint(&v1_doc));

    // ybin of the current document, on stdout (not a terminal): the latest
    // version plus the log after it.
    let current = snapshot_cli(db.url(), &["export", "notes"]).await;
    ok(&current);
    assert_eq!(fingerprint(&load(&current.stdout)), fingerprint(&now_doc));
    assert_eq!(
        load(&current.stdout).transact().state_vector(),
        now_doc.transact().state_vector()
    );

    // msgpack: the envelope.
    ok(&snapshot_cli(
        db.url(),
        &[
            "export",
            "notes",
            "--version",
            &v1.to_string(),
            "--format",
            "msgpack",
            "-o",
            &file("v1.msgpack"),
        ],
    )
    .await);
    let backup: Backup =
        rmp_serde::from_slice(&std::fs::read(file("v1.msgpack")).unwrap()).unwrap();
    assert_eq!(backup.format, BACKUP_FORMAT);
    assert_eq!(backup.room, "notes");
    assert_eq!(backup.version, Some(v1));
    assert!(chrono::DateTime::parse_from_rfc3339(&backup.created_at).is_ok());
    assert_eq!(backup.state, v1_state);
    assert_eq!(
        StateVector::decode_v1(&backup.state_vector).unwrap(),
        v1_doc.transact().state_vector()
    );
    let current = snapshot_cli(db.url(), &["export", "notes", "--format", "msgpack"]).await;
    let backup: Backup = rmp_serde::from_slice(&current.stdout).unwrap();
    assert_eq!(backup.version, None);

    // json: the content, as the server renders it.
    let json = json_of(&ok(&snapshot_cli(
        db.url(),
        &["export", "notes", "--format", "json"],
    )
    .await));
    assert_eq!(json, crdt_hub::doc_json::doc_to_json(&now_doc));
    assert_eq!(json["a"][3], "tail");
    let json = json_of(&ok(&snapshot_cli(
        db.url(),
        &[
            "export",
            "notes",
            "--version",
            &v1.to_string(),
            "--format",
            "json",
        ],
    )
    .await));
    assert_eq!(json["m"]["n"], 1);
}

async fn export_then_import_reproduces_the_document(db: &Db) {
    let store = db.store().await;
    seed_history(&store, "notes").await;
    let original = stored_doc(db.url(), "notes").await;
    let dir = db.dir();
    for format in ["ybin", "msgpack"] {
        let path = dir.path().join(format!("notes.{format}"));
        let path = path.to_str().unwrap();
        ok(&snapshot_cli(
            db.url(),
            &["export", "notes", "--format", format, "-o", path],
        )
        .await);
        let copy = format!("copy-{format}");
        ok(&snapshot_cli(db.url(), &["import", &copy, path]).await);
        let imported = stored_doc(db.url(), &copy).await;
        assert_eq!(fingerprint(&imported), fingerprint(&original), "{format}");
        // Importing the same file again changes nothing (a CRDT merge).
        ok(&snapshot_cli(db.url(), &["import", &copy, path]).await);
        assert_eq!(
            fingerprint(&*stored_doc(db.url(), &copy).await),
            fingerprint(&original)
        );
    }
}

async fn import_merges_into_a_live_room_through_the_server(db: &Db) {
    let server = TestServer::start_with(ServerOptions {
        database_url: Some(db.url().to_string()),
        ..ServerOptions::default()
    })
    .await;
    let mut alice = YClient::connect(&server.url("live")).await;
    alice.insert("t", 0, "alice was here. ").await;
    let mut bob = YClient::connect(&server.url("live")).await;
    bob.until("alice's text", |c| c.text("t") == "alice was here. ")
        .await;

    let dir = db.dir();
    let path = dir.path().join("import.ybin");
    let source = Doc::new();
    {
        let t = source.get_or_insert_text("t");
        let m = source.get_or_insert_map("m");
        let mut txn = source.transact_mut();
        t.insert(&mut txn, 0, "imported");
        m.insert(&mut txn, "from", "file");
    }
    std::fs::write(&path, state(&source)).unwrap();
    let server_url = format!("http://{}", server.addr);
    let out = snapshot_cli(
        db.url(),
        &[
            "import",
            "live",
            path.to_str().unwrap(),
            "--server",
            &server_url,
        ],
    )
    .await;
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("live through"));
    // Both clients receive the merge at once, without reconnecting.
    for client in [&mut alice, &mut bob] {
        client
            .until("the imported text", |c| {
                let t = c.text("t");
                t.contains("imported") && t.contains("alice was here. ")
            })
            .await;
    }
    assert_eq!(alice.text("t"), bob.text("t"));
    server.stop().await;
}

async fn restore_without_a_server(db: &Db) {
    let store = db.store().await;
    let (v1, _, v1_doc, now_doc) = seed_history(&store, "notes").await;

    let out = ok(&snapshot_cli(
        db.url(),
        &["restore", "notes", "--version", &v1.to_string()],
    )
    .await);
    assert!(
        out.contains(&format!("restored room \"notes\" to version {v1}")),
        "{out}"
    );
    let restored = stored_doc(db.url(), "notes").await;
    assert_eq!(fingerprint(&restored), fingerprint(&v1_doc));

    // The history: the state before, then the restore.
    let versions = json_of(&ok(
        &snapshot_cli(db.url(), &["list", "notes", "--json"]).await
    ));
    let (after, before) = (&versions[0], &versions[1]);
    assert_eq!(after["restored_from"], v1);
    assert!(before["restored_from"].is_null());
    let before_id = before["id"].as_i64().unwrap();
    assert!(out.contains(&format!("--version {before_id}")), "{out}");

    // Undo: restore the state before the restore.
    ok(&snapshot_cli(
        db.url(),
        &["restore", "notes", "--version", &before_id.to_string()],
    )
    .await);
    assert_eq!(
        fingerprint(&*stored_doc(db.url(), "notes").await),
        fingerprint(&now_doc)
    );

    // Into another room.
    ok(&snapshot_cli(
        db.url(),
        &[
            "restore",
            "notes",
            "--version",
            &v1.to_string(),
            "--into",
            "copy",
        ],
    )
    .await);
    assert_eq!(
        fingerprint(&*stored_doc(db.url(), "copy").await),
        fingerprint(&v1_doc)
    );
    assert_eq!(
        fingerprint(&*stored_doc(db.url(), "notes").await),
        fingerprint(&now_doc)
    );
}

async fn errors_exit_non_zero(db: &Db) {
    let store = db.store().await;
    let (v1, _, _, _) = seed_history(&store, "notes").await;
    let dir = db.dir();
    let missing = dir.path().join("missing.ybin");
    let garbage = dir.path().join("garbage.ybin");
    std::fs::write(&garbage, b"this is not a Yjs update at all").unwrap();
    let url = db.url();

    fails_with(
        &snapshot_cli(url, &["list", "nope"]).await,
        "room \"nope\" not found",
    );
    fails_with(
        &snapshot_cli(url, &["export", "nope"]).await,
        "room \"nope\" not found",
    );
    fails_with(
        &snapshot_cli(url, &["export", "notes", "--version", "999999"]).await,
        "has no version 999999",
    );
    fails_with(
        &snapshot_cli(url, &["restore", "notes", "--version", "999999"]).await,
        "has no version 999999",
    );
    fails_with(
        &snapshot_cli(url, &["restore", "nope", "--version", &v1.to_string()]).await,
        "not found",
    );
    fails_with(
        &snapshot_cli(url, &["import", "notes", missing.to_str().unwrap()]).await,
        "cannot read",
    );
    fails_with(
        &snapshot_cli(url, &["import", "notes", garbage.to_str().unwrap()]).await,
        "cannot be imported",
    );
    fails_with(
        &snapshot_cli(
            url,
            &[
                "restore",
                "notes",
                "--version",
                &v1.to_string(),
                "--server",
                "http://127.0.0.1:9",
            ],
        )
        .await,
        "cannot reach the server",
    );
    // The failed commands wrote nothing.
    assert_eq!(store.snapshots(&room("notes")).await.unwrap().len(), 2);
    assert!(store.room_summary(&room("nope")).await.unwrap().is_none());
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
    rooms_and_versions_as_tables_and_json,
    export_in_every_format,
    export_then_import_reproduces_the_document,
    import_merges_into_a_live_room_through_the_server,
    restore_without_a_server,
    errors_exit_non_zero,
);

// ---------------------------------------------------------------------------
// Backend-independent cases
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    // Nothing listens on port 9 (discard) on loopback.
    let out = snapshot_cli("postgres://postgres@127.0.0.1:9/none", &["rooms"]).await;
    fails_with(&out, "cannot open the database");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("typo.db").display());
    fails_with(&snapshot_cli(&url, &["rooms"]).await, "no database at");
    assert!(
        !dir.path().join("typo.db").exists(),
        "the CLI created a database"
    );
}

#[tokio::test]
async fn binary_output_is_not_written_to_a_terminal() {
    // `script` gives the command a pseudo-terminal for stdout.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let db = Db::sqlite().await;
    seed_history(&db.store().await, "notes").await;
    let command = format!(
        "{} snapshot export notes --database-url {}",
        env!("CARGO_BIN_EXE_crdt-hub-under-test"),
        db.url()
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("refusing to write a binary Yjs update to a terminal"),
        "{shown}"
    );
    // JSON is fine on a terminal.
    let command = format!("{command} --format json");
    let out = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn help_explains_every_subcommand_with_an_example() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_crdt-hub-under-test"))
        .args(["snapshot", "--help"])
        .output()
        .await
        .unwrap();
    let help = ok(&out);
    for sub in ["rooms", "list", "export", "import", "restore"] {
        assert!(
            help.contains(&format!("crdt-hub snapshot {sub}")),
            "no example for {sub}:\n{help}"
        );
    }
}
