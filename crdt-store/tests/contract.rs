//! The contract every `Store` backend honours, run against real databases:
//! SQLite in a temporary file (and once in memory), and Postgres in a fresh
//! database per test, dropped afterwards.
//!
//! Postgres: the admin connection (which creates and drops the test
//! databases) is `CRDT_HUB_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`.
//!
//! Each test in `contract` is generated once per backend by
//! `contract_tests!`, as `sqlite::<name>` and `postgres::<name>`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crdt_store::{PendingUpdate, RoomName, Store, StoredRoom};
use sqlx::{AssertSqlSafe, Connection};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Doc, GetString, Map, MapRef, ReadTxn, Text, TextRef, Transact, TransactionMut, Update,
};

const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

// ---------------------------------------------------------------------------
// Harness: one fresh database per test, cleaned up even when the test fails.
// ---------------------------------------------------------------------------

/// What a contract test gets: the store under test and the URL it was
/// opened with (to reopen it, or to reach under it and damage a row).
struct Ctx {
    store: Arc<dyn Store>,
    url: String,
}

/// Runs the test body on its own task so that a failing assertion comes
/// back here as a panic payload: cleanup runs first, then the panic goes on.
async fn run_contained<Fut>(test: Fut) -> Result<(), Box<dyn std::any::Any + Send>>
where
    Fut: Future<Output = ()> + Send + 'static,
{
    match tokio::spawn(test).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_panic() => Err(e.into_panic()),
        Err(e) => Err(Box::new(format!("test task did not finish: {e}"))),
    }
}

async fn on_sqlite_file<F, Fut>(test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    // The file does not exist yet: connect must create it.
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = crdt_store::connect(&url).await.expect("open SQLite store");
    let outcome = run_contained(test(Ctx { store, url })).await;
    drop(dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admin_url = std::env::var("CRDT_HUB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_string());
    let database = format!(
        "crdt_store_test_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to Postgres at {admin_url}: {e}"));
    // The name is made here of [a-z0-9_]: safe to splice into DDL, which
    // takes no bind parameters.
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
        .execute(&mut admin)
        .await
        .expect("create test database");

    let url = with_database(&admin_url, &database);
    let outcome = match crdt_store::connect(&url).await {
        Ok(store) => run_contained(test(Ctx { store, url })).await,
        Err(e) => Err(Box::new(format!("open Postgres store: {e:?}")) as _),
    };

    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop test database");
    admin.close().await.ok();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// `admin_url` with its database replaced by `database`.
fn with_database(admin_url: &str, database: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let authority = base.find("://").map_or(0, |at| at + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |at| authority + at);
    let mut url = format!("{}/{database}", &base[..path]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

macro_rules! contract_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::on_sqlite_file(super::contract::$name).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::on_postgres(super::contract::$name).await;
                }
            )+
        }
    };
}

contract_tests!(
    append_packs_each_rooms_updates_into_one_entry,
    load_returns_snapshot_then_log,
    write_snapshot_folds_log_and_keeps_content,
    write_snapshot_keeps_log_entries_the_state_lacks,
    write_snapshot_merges_a_foreign_snapshot,
    base_that_is_latest_is_not_merged_again,
    prune_keeps_the_newest,
    corrupt_log_entry_is_reported_and_nothing_changes,
    corrupt_stored_snapshot_is_reported_and_nothing_changes,
    damaged_packed_entry_is_reported_and_nothing_changes,
    entries_from_before_packing_still_load,
    delete_room_removes_everything,
    rooms_lists_every_room,
    odd_room_names_round_trip,
    concurrent_writers_lose_nothing,
    reopening_keeps_data,
    revocations_last_until_their_time_and_survive_reopening,
    outbox_sends_each_room_in_order_one_event_at_a_time,
    outbox_leases_expire_and_dead_letters_wait_for_redelivery_or_pruning,
    outbox_concurrent_claimers_never_share_an_event,
    unreported_changes_are_counted_with_the_edits_and_reported_once,
);

// ---------------------------------------------------------------------------
// Yjs helpers: real documents, real updates.
// ---------------------------------------------------------------------------

/// A simulated editor: a Yjs document with its own client id whose edits
/// come out as v1 updates, as a browser's would.
struct Writer {
    doc: Doc,
    text: TextRef,
    map: MapRef,
}

impl Writer {
    fn new(client: u64) -> Self {
        let doc = Doc::with_client_id(client);
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        Self { doc, text, map }
    }

    /// Applies `f` in one transaction and returns the update it produced.
    fn edit(&self, f: impl FnOnce(&mut TransactionMut, &TextRef, &MapRef)) -> Vec<u8> {
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            f(&mut txn, &self.text, &self.map);
        }
        self.doc.transact().encode_state_as_update_v1(&before)
    }

    fn insert(&self, index: u32, chunk: &str) -> Vec<u8> {
        self.edit(|txn, text, _| text.insert(txn, index, chunk))
    }

    fn remove(&self, index: u32, len: u32) -> Vec<u8> {
        self.edit(|txn, text, _| text.remove_range(txn, index, len))
    }

    fn set(&self, key: &str, value: &str) -> Vec<u8> {
        self.edit(|txn, _, map| {
            map.insert(txn, key, value);
        })
    }

    fn apply(&self, update: &[u8]) {
        let update = Update::decode_v1(update).expect("stored update decodes");
        self.doc
            .transact_mut()
            .apply_update(update)
            .expect("stored update applies");
    }

    fn apply_stored(&self, stored: &StoredRoom) {
        if let Some(snapshot) = &stored.snapshot {
            self.apply(&snapshot.state);
        }
        for update in &stored.updates {
            self.apply(&update.data);
        }
    }

    fn state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    }

    fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    fn map_json(&self) -> Any {
        self.map.to_json(&self.doc.transact())
    }
}

/// The document a server would rebuild from `stored`.
fn rebuild(stored: &StoredRoom) -> Writer {
    let doc = Writer::new(999_999);
    doc.apply_stored(stored);
    doc
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("valid room name")
}

fn pending(room: &RoomName, data: impl Into<Bytes>) -> PendingUpdate {
    PendingUpdate {
        room: room.clone(),
        data: data.into(),
    }
}

fn snapshot_of<'a>(
    room: &'a RoomName,
    state: &'a [u8],
    base: Option<crdt_store::SnapshotId>,
    through: Option<crdt_store::UpdateId>,
) -> crdt_store::NewSnapshot<'a> {
    crdt_store::NewSnapshot {
        room,
        state,
        base,
        through,
        unlogged_updates: 0,
        restored_from: None,
    }
}

/// Bytes that are not a Yjs update (an unterminated variable-length integer).
const GARBAGE: &[u8] = &[0xff; 8];

/// Overwrites the latest snapshot of `room` with garbage, under the store.
async fn damage_latest_snapshot(url: &str, room: &RoomName) {
    let latest = format!(
        "(SELECT max(id) FROM snapshots WHERE room = '{}')",
        room.as_str().replace('\'', "''")
    );
    let garbage = hex(GARBAGE);
    under_the_store(
        url,
        &format!("UPDATE snapshots SET state = X'{garbage}' WHERE id = {latest}"),
        &format!("UPDATE snapshots SET state = decode('{garbage}', 'hex') WHERE id = {latest}"),
    )
    .await;
}

/// Runs raw SQL under the store: `sqlite` or `postgres`, whichever `url`
/// opens. Only literals the test made itself, no bind parameters.
async fn under_the_store(url: &str, sqlite: &str, postgres: &str) {
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(sqlite.to_string()))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(postgres.to_string()))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The contract.
// ---------------------------------------------------------------------------

mod contract {
    use crdt_store::StoreError;

    use super::*;

    // The webhook outbox, in a file of its own.
    mod outbox;
    pub use outbox::*;

    pub async fn append_packs_each_rooms_updates_into_one_entry(Ctx { store, .. }: Ctx) {
        let (a, b) = (room("a"), room("b"));
        assert!(store.append(&[]).await.unwrap().is_empty());
        assert!(
            store.rooms().await.unwrap().is_empty(),
            "empty batch is a no-op"
        );

        let datas: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let batch: Vec<PendingUpdate> = datas
            .iter()
            .enumerate()
            .map(|(i, data)| pending(if i % 2 == 0 { &a } else { &b }, data.clone()))
            .collect();
        let ids = store.append(&batch).await.unwrap();
        assert_eq!(ids.len(), batch.len());
        // One log entry per room: its updates share the entry's id.
        assert_eq!([ids[0], ids[2]], [ids[4], ids[4]], "{ids:?}");
        assert_eq!([ids[1], ids[3]], [ids[5], ids[5]], "{ids:?}");
        assert_ne!(ids[0], ids[1]);

        let later = store.append(&[pending(&a, vec![42])]).await.unwrap();
        assert!(later[0] > ids[0].max(ids[1]), "ids only grow");

        let loaded = store.load(&a).await.unwrap();
        let loaded_ids: Vec<_> = loaded.updates.iter().map(|u| u.id).collect();
        assert_eq!(loaded_ids, vec![ids[0], ids[0], ids[0], later[0]]);
        let loaded_data: Vec<_> = loaded.updates.iter().map(|u| u.data.clone()).collect();
        assert_eq!(
            loaded_data,
            [&datas[0], &datas[2], &datas[4], &vec![42]].map(Clone::clone)
        );
        assert_eq!(loaded.last_update_id(), Some(later[0]));
        // Many rooms and many updates in one batch (several statements on
        // SQLite): each room gets its own updates back, in batch order, and
        // an empty update survives as one.
        let rooms: Vec<RoomName> = (0..300).map(|i| room(&format!("r{i:03}"))).collect();
        let mut batch = Vec::new();
        for round in 0..3u8 {
            for (i, r) in rooms.iter().enumerate() {
                let data = if round == 1 && i % 7 == 0 {
                    Vec::new()
                } else {
                    vec![round; i % 5 + 1]
                };
                batch.push(pending(r, data));
            }
        }
        let ids = store.append(&batch).await.unwrap();
        assert_eq!(ids.len(), batch.len());
        for (i, r) in rooms.iter().enumerate() {
            let expected: Vec<_> = batch
                .iter()
                .filter(|u| u.room == *r)
                .map(|u| u.data.to_vec())
                .collect();
            let loaded = store.load(r).await.unwrap();
            let got: Vec<_> = loaded.updates.iter().map(|u| u.data.clone()).collect();
            assert_eq!(got, expected, "room {i}");
            assert!(loaded.updates.iter().all(|u| u.id == ids[i]), "room {i}");
        }

        // Compaction deletes the newest entries: their ids are not reused.
        let c = room("c");
        let w = Writer::new(1);
        let newest = store
            .append(&[pending(&c, w.insert(0, "x"))])
            .await
            .unwrap()[0];
        store
            .write_snapshot(snapshot_of(&c, &w.state(), None, Some(newest)), 1)
            .await
            .unwrap();
        let next = store
            .append(&[pending(&c, w.insert(1, "y"))])
            .await
            .unwrap()[0];
        assert!(next > newest, "{next} > {newest}");
        assert_eq!(rebuild(&store.load(&c).await.unwrap()).text(), "xy");
    }

    pub async fn load_returns_snapshot_then_log(Ctx { store, .. }: Ctx) {
        let r = room("doc");
        let unknown = store.load(&room("never written")).await.unwrap();
        assert!(unknown.is_empty());
        assert_eq!(unknown.last_update_id(), None);

        let w = Writer::new(1);
        let first = w.insert(0, "hello");
        let second = w.set("title", "greeting");
        let ids = store
            .append(&[pending(&r, first), pending(&r, second)])
            .await
            .unwrap();
        let info = store
            .write_snapshot(snapshot_of(&r, &w.state(), None, Some(ids[1])), 3)
            .await
            .unwrap();
        let third = w.insert(5, " world");
        let third_id = store.append(&[pending(&r, third.clone())]).await.unwrap()[0];

        let loaded = store.load(&r).await.unwrap();
        let snapshot = loaded.snapshot.as_ref().expect("a snapshot");
        assert_eq!(snapshot.info, info);
        assert_eq!(loaded.updates.len(), 1);
        assert_eq!(loaded.updates[0].id, third_id);
        assert_eq!(loaded.updates[0].data, third);

        let rebuilt = rebuild(&loaded);
        assert_eq!(rebuilt.text(), "hello world");
        assert_eq!(rebuilt.map_json(), w.map_json());
    }

    /// Log entries the state already holds are left out of the merge; one
    /// it lacks (another node's, or one its room still holds back) is not.
    pub async fn write_snapshot_keeps_log_entries_the_state_lacks(Ctx { store, .. }: Ctx) {
        let r = room("lacking");
        let ada = Writer::new(7);
        store
            .append(&[pending(&r, ada.insert(0, "hello"))])
            .await
            .unwrap();
        let state = rebuild(&store.load(&r).await.unwrap()).state();
        let grace = Writer::new(8);
        store
            .append(&[
                pending(&r, grace.insert(0, "world")),
                pending(&r, ada.insert(5, "!")),
            ])
            .await
            .unwrap();
        let loaded = store.load(&r).await.unwrap();
        store
            .write_snapshot(snapshot_of(&r, &state, None, loaded.last_update_id()), 5)
            .await
            .unwrap();

        let after = store.load(&r).await.unwrap();
        assert!(after.updates.is_empty(), "folded entries are deleted");
        let text = rebuild(&after).text();
        assert_eq!(text.len(), "hello!world".len(), "{text}");
        assert!(text.contains("hello!") && text.contains("world"), "{text}");
    }

    pub async fn write_snapshot_folds_log_and_keeps_content(Ctx { store, .. }: Ctx) {
        let r = room("notes");
        let w = Writer::new(7);
        let mut ids = Vec::new();
        for update in [
            w.insert(0, "hello"),
            w.set("author", "ada"),
            w.insert(5, " brave new world"),
            w.remove(5, 6), // " brave"
            w.set("author", "grace"),
        ] {
            ids.extend(store.append(&[pending(&r, update)]).await.unwrap());
        }
        let batch = [
            pending(&r, w.insert(0, ">> ")),
            pending(&r, w.set("n", "1")),
        ];
        ids.extend(store.append(&batch).await.unwrap());
        assert_eq!(w.text(), ">> hello new world");

        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.updates.len(), ids.len());
        let rebuilt = rebuild(&loaded);
        assert_eq!(rebuilt.text(), w.text());

        let state = rebuilt.state();
        let info = store
            .write_snapshot(snapshot_of(&r, &state, None, loaded.last_update_id()), 5)
            .await
            .unwrap();
        assert_eq!(info.room, r);
        assert_eq!(info.updates, 7, "seven updates, the last two in one entry");
        assert_eq!(info.restored_from, None);

        let after = store.load(&r).await.unwrap();
        assert!(after.updates.is_empty(), "folded entries are deleted");
        let snapshot = after.snapshot.as_ref().unwrap();
        assert_eq!(snapshot.info, info);
        assert_eq!(info.size, i64::try_from(snapshot.state.len()).unwrap());
        assert_eq!(
            snapshot.state_vector,
            yrs::encode_state_vector_from_update_v1(&snapshot.state).unwrap()
        );
        let reloaded = rebuild(&after);
        assert_eq!(reloaded.text(), w.text());
        assert_eq!(reloaded.map_json(), w.map_json());

        assert_eq!(store.snapshots(&r).await.unwrap(), vec![info.clone()]);
        let fetched = store.snapshot(&r, info.id).await.unwrap().unwrap();
        assert_eq!(fetched.state, snapshot.state);
        assert_eq!(fetched.info, info);
        assert!(store.snapshot(&r, info.id + 1000).await.unwrap().is_none());
        assert!(
            store
                .snapshot(&room("other"), info.id)
                .await
                .unwrap()
                .is_none()
        );

        // Entries the writer never saw but that `through` covers are merged
        // from the log, not dropped.
        let unseen = [pending(&r, w.insert(0, "[")), pending(&r, w.set("n", "2"))];
        let unseen_ids = store.append(&unseen).await.unwrap();
        let info2 = store
            .write_snapshot(
                snapshot_of(&r, &state, Some(info.id), Some(unseen_ids[1])),
                5,
            )
            .await
            .unwrap();
        assert_eq!(info2.updates, 9);
        let latest = rebuild(&store.load(&r).await.unwrap());
        assert_eq!(latest.text(), "[>> hello new world");
        assert_eq!(latest.map_json(), w.map_json());
    }

    pub async fn write_snapshot_merges_a_foreign_snapshot(Ctx { store, .. }: Ctx) {
        // Two server processes, each with its own copy of the room.
        let r = room("shared");
        let seed = Writer::new(1);
        let seed_id = store
            .append(&[pending(&r, seed.insert(0, "seed."))])
            .await
            .unwrap()[0];
        let s0 = store
            .write_snapshot(snapshot_of(&r, &seed.state(), None, Some(seed_id)), 10)
            .await
            .unwrap();

        let alice = Writer::new(2);
        let bob = Writer::new(3);
        let start = store.load(&r).await.unwrap();
        alice.apply_stored(&start);
        bob.apply_stored(&start);
        let base = start.snapshot.as_ref().map(|s| s.info.id);
        assert_eq!(base, Some(s0.id));

        let a1 = store
            .append(&[pending(&r, alice.insert(5, " alice"))])
            .await
            .unwrap()[0];
        let b1 = store
            .append(&[pending(&r, bob.set("bob", "was here"))])
            .await
            .unwrap()[0];

        // Alice's process compacts from her own state, folding the whole log
        // (including Bob's entry, which she never applied).
        let s1 = store
            .write_snapshot(snapshot_of(&r, &alice.state(), base, Some(b1.max(a1))), 10)
            .await
            .unwrap();
        assert_eq!(s1.updates, 3);

        // Bob still believes s0 is the latest; he edits once more without
        // logging, then compacts from his state. s1 is not his base: merged.
        bob.set("bob2", "unlogged");
        let s2 = store
            .write_snapshot(
                crdt_store::NewSnapshot {
                    unlogged_updates: 1,
                    ..snapshot_of(&r, &bob.state(), base, Some(b1))
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(s2.updates, 4);

        let merged = rebuild(&store.load(&r).await.unwrap());
        assert_eq!(merged.text(), "seed. alice");
        let Any::Map(map) = merged.map_json() else {
            panic!("map is a map")
        };
        assert_eq!(map.get("bob"), Some(&Any::from("was here")));
        assert_eq!(map.get("bob2"), Some(&Any::from("unlogged")));
    }

    pub async fn base_that_is_latest_is_not_merged_again(Ctx { store, .. }: Ctx) {
        // A writer naming the latest snapshot as its base is trusted to
        // contain it: that is how a restore writes an older state.
        let r = room("history");
        let w = Writer::new(1);
        w.insert(0, "v1");
        let v1 = store
            .write_snapshot(snapshot_of(&r, &w.state(), None, None), 10)
            .await
            .unwrap();
        let v1_state = store.snapshot(&r, v1.id).await.unwrap().unwrap().state;
        w.insert(2, " v2");
        let v2 = store
            .write_snapshot(snapshot_of(&r, &w.state(), Some(v1.id), None), 10)
            .await
            .unwrap();
        assert_eq!(rebuild(&store.load(&r).await.unwrap()).text(), "v1 v2");

        let restored = store
            .write_snapshot(
                crdt_store::NewSnapshot {
                    restored_from: Some(v1.id),
                    ..snapshot_of(&r, &v1_state, Some(v2.id), None)
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(restored.restored_from, Some(v1.id));
        assert_eq!(rebuild(&store.load(&r).await.unwrap()).text(), "v1");
        let history: Vec<_> = store.snapshots(&r).await.unwrap();
        assert_eq!(history, vec![restored, v2, v1]);
    }

    pub async fn prune_keeps_the_newest(Ctx { store, .. }: Ctx) {
        let (r, other) = (room("versions"), room("bystander"));
        let w = Writer::new(1);
        let bystander = store
            .write_snapshot(snapshot_of(&other, &w.state(), None, None), 1)
            .await
            .unwrap();

        let mut written = Vec::new();
        let mut base = None;
        for i in 0..5 {
            w.insert(0, &i.to_string());
            let info = store
                .write_snapshot(snapshot_of(&r, &w.state(), base, None), 3)
                .await
                .unwrap();
            base = Some(info.id);
            written.push(info);
        }
        let kept: Vec<_> = store.snapshots(&r).await.unwrap();
        let newest_first: Vec<_> = written.iter().rev().take(3).cloned().collect();
        assert_eq!(kept, newest_first);
        assert!(store.snapshot(&r, written[0].id).await.unwrap().is_none());

        // keep = 0 is treated as 1: the latest is never pruned.
        w.insert(0, "!");
        let last = store
            .write_snapshot(snapshot_of(&r, &w.state(), base, None), 0)
            .await
            .unwrap();
        assert_eq!(store.snapshots(&r).await.unwrap(), vec![last]);
        assert_eq!(rebuild(&store.load(&r).await.unwrap()).text(), "!43210");

        assert_eq!(store.snapshots(&other).await.unwrap(), vec![bystander]);
    }

    pub async fn corrupt_log_entry_is_reported_and_nothing_changes(Ctx { store, .. }: Ctx) {
        let r = room("damaged");
        let w = Writer::new(1);
        let ids = store
            .append(&[
                pending(&r, w.insert(0, "a")),
                pending(&r, GARBAGE),
                pending(&r, w.insert(1, "b")),
            ])
            .await
            .unwrap();
        let before = store.load(&r).await.unwrap();

        let err = store
            .write_snapshot(snapshot_of(&r, &w.state(), None, Some(ids[2])), 3)
            .await
            .unwrap_err();
        match &err {
            StoreError::Corrupt { room, what, .. } => {
                assert_eq!(room, &r);
                // The three went into one log entry.
                assert_eq!(what, &format!("update 2 of log entry {}", ids[1]));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(!err.is_transient());

        let after = store.load(&r).await.unwrap();
        assert!(after.snapshot.is_none());
        let ids_after: Vec<_> = after.updates.iter().map(|u| u.id).collect();
        assert_eq!(
            ids_after,
            before.updates.iter().map(|u| u.id).collect::<Vec<_>>()
        );
        assert!(store.snapshots(&r).await.unwrap().is_empty());

        // A corrupt state from the caller is refused the same way.
        let err = store
            .write_snapshot(snapshot_of(&r, GARBAGE, None, None), 3)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(store.snapshots(&r).await.unwrap().is_empty());
    }

    /// A log row whose bytes do not split into the updates its count
    /// claims is reported by `load` and `write_snapshot` alike, and the
    /// row stays for the operator.
    pub async fn damaged_packed_entry_is_reported_and_nothing_changes(Ctx { store, url }: Ctx) {
        let r = room("damaged-pack");
        let w = Writer::new(1);
        let ids = store
            .append(&[pending(&r, w.insert(0, "a")), pending(&r, w.insert(1, "b"))])
            .await
            .unwrap();
        under_the_store(
            &url,
            "UPDATE updates SET update_count = 3 WHERE room = 'damaged-pack'",
            "UPDATE updates SET update_count = 3 WHERE room = 'damaged-pack'",
        )
        .await;

        let expected = format!("log entry {} should hold 3 updates", ids[0]);
        match store.load(&r).await.unwrap_err() {
            StoreError::Corrupt { room, what, .. } => {
                assert_eq!(room, r);
                assert!(what.starts_with(&expected), "{what}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let err = store
            .write_snapshot(snapshot_of(&r, &w.state(), None, Some(ids[0])), 3)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what.starts_with(&expected)),
            "{err:?}"
        );
        assert!(store.snapshots(&r).await.unwrap().is_empty());

        under_the_store(
            &url,
            "UPDATE updates SET update_count = 2 WHERE room = 'damaged-pack'",
            "UPDATE updates SET update_count = 2 WHERE room = 'damaged-pack'",
        )
        .await;
        assert_eq!(rebuild(&store.load(&r).await.unwrap()).text(), "ab");
    }

    /// Rows written before log entries held several updates have no count
    /// of their own: the migration gives them 1, and they read as before.
    pub async fn entries_from_before_packing_still_load(Ctx { store, url }: Ctx) {
        let r = room("legacy");
        let w = Writer::new(1);
        let (old, new) = (w.insert(0, "old "), w.insert(4, "and new"));
        under_the_store(
            &url,
            &format!(
                "INSERT INTO rooms (name, created_at, updated_at, update_count) \
                 VALUES ('legacy', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 1); \
                 INSERT INTO updates (room, data, created_at) \
                 VALUES ('legacy', X'{}', '2026-11-01T00:00:00Z')",
                hex(&old)
            ),
            &format!(
                "INSERT INTO rooms (name, update_count) VALUES ('legacy', 1); \
                 INSERT INTO updates (room, data) VALUES ('legacy', decode('{}', 'hex'))",
                hex(&old)
            ),
        )
        .await;
        store
            .append(&[pending(&r, new.clone()), pending(&r, w.set("k", "v"))])
            .await
            .unwrap();

        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.updates.len(), 3);
        assert_eq!(loaded.updates[0].data, old);
        assert_eq!(loaded.updates[1].data, new);
        assert_eq!(rebuild(&loaded).text(), "old and new");

        let state = rebuild(&loaded).state();
        let info = store
            .write_snapshot(snapshot_of(&r, &state, None, loaded.last_update_id()), 3)
            .await
            .unwrap();
        assert_eq!(info.updates, 3);
        let after = store.load(&r).await.unwrap();
        assert!(after.updates.is_empty());
        assert_eq!(rebuild(&after).text(), "old and new");
    }

    pub async fn corrupt_stored_snapshot_is_reported_and_nothing_changes(Ctx { store, url }: Ctx) {
        let r = room("damaged snapshot");
        let w = Writer::new(1);
        store
            .write_snapshot(snapshot_of(&r, &w.state(), None, None), 3)
            .await
            .unwrap();
        damage_latest_snapshot(&url, &r).await;
        let id = store
            .append(&[pending(&r, w.insert(0, "x"))])
            .await
            .unwrap()[0];

        // Not the writer's base: the store must merge it, and cannot.
        let err = store
            .write_snapshot(snapshot_of(&r, &w.state(), None, Some(id)), 3)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what.contains("snapshot")),
            "{err:?}"
        );
        let after = store.load(&r).await.unwrap();
        assert_eq!(after.updates.len(), 1, "the log entry was not deleted");
        assert_eq!(store.snapshots(&r).await.unwrap().len(), 1);
    }

    pub async fn revocations_last_until_their_time_and_survive_reopening(Ctx { store, url }: Ctx) {
        use crdt_store::{Revocation, RevocationKind};
        let now = chrono::Utc::now();
        let revocation = |kind, value: &str, minutes: i64| Revocation {
            kind,
            value: value.to_string(),
            until: now + chrono::Duration::minutes(minutes),
            created_at: now,
        };
        assert!(store.revocations(now).await.unwrap().is_empty());
        store
            .revoke(&revocation(RevocationKind::Sub, "alice", 60))
            .await
            .unwrap();
        store
            .revoke(&revocation(RevocationKind::Jti, "token-1", 1))
            .await
            .unwrap();
        // The same one again moves its time.
        store
            .revoke(&revocation(RevocationKind::Sub, "alice", 120))
            .await
            .unwrap();
        let mut active = store.revocations(now).await.unwrap();
        active.sort_by(|a, b| a.value.cmp(&b.value));
        assert_eq!(active.len(), 2);
        assert_eq!(active[0].value, "alice");
        assert_eq!(
            active[0].until.timestamp(),
            (now + chrono::Duration::minutes(120)).timestamp()
        );
        // Another process sees them; past its time one is gone for good.
        let reopened = crdt_store::connect(&url).await.unwrap();
        let later = now + chrono::Duration::minutes(5);
        let active = reopened.revocations(later).await.unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].kind, RevocationKind::Sub);
        assert_eq!(store.revocations(now).await.unwrap().len(), 1, "pruned");
    }

    pub async fn delete_room_removes_everything(Ctx { store, .. }: Ctx) {
        let (gone, kept) = (room("gone"), room("kept"));
        let w = Writer::new(1);
        let ids = store
            .append(&[
                pending(&gone, w.insert(0, "a")),
                pending(&kept, w.insert(1, "b")),
            ])
            .await
            .unwrap();
        store
            .write_snapshot(snapshot_of(&gone, &w.state(), None, Some(ids[0])), 3)
            .await
            .unwrap();
        store
            .append(&[pending(&gone, w.insert(2, "c"))])
            .await
            .unwrap();

        assert!(store.delete_room(&gone).await.unwrap());
        assert!(store.load(&gone).await.unwrap().is_empty());
        assert!(store.snapshots(&gone).await.unwrap().is_empty());
        let names: Vec<_> = store
            .rooms()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.room)
            .collect();
        assert_eq!(names, vec![kept.clone()]);
        assert_eq!(store.load(&kept).await.unwrap().updates.len(), 1);

        assert!(!store.delete_room(&gone).await.unwrap());
        assert!(!store.delete_room(&room("never")).await.unwrap());

        // The name is free again.
        store
            .append(&[pending(&gone, w.insert(0, "z"))])
            .await
            .unwrap();
        assert_eq!(store.load(&gone).await.unwrap().updates.len(), 1);
    }

    pub async fn rooms_lists_every_room(Ctx { store, .. }: Ctx) {
        assert!(store.rooms().await.unwrap().is_empty());
        let (a, b, z) = (room("a-room"), room("b-room"), room("Z"));
        let w = Writer::new(1);
        let (a1, a2) = (w.insert(0, "one"), w.insert(3, "two"));
        let (b1, b2) = (w.insert(0, "three"), w.insert(0, "four"));
        store
            .append(&[
                pending(&b, b1.clone()),
                pending(&a, a1.clone()),
                pending(&a, a2.clone()),
            ])
            .await
            .unwrap();
        let b_snapshot = store
            .write_snapshot(snapshot_of(&b, &w.state(), None, None), 3)
            .await
            .unwrap();
        store.append(&[pending(&b, b2.clone())]).await.unwrap();
        store
            .write_snapshot(snapshot_of(&z, &Writer::new(2).state(), None, None), 3)
            .await
            .unwrap();

        let listed = store.rooms().await.unwrap();
        let names: Vec<_> = listed.iter().map(|s| s.room.as_str()).collect();
        assert_eq!(names, ["Z", "a-room", "b-room"], "byte order");
        let len = |d: &[u8]| i64::try_from(d.len()).unwrap();
        // a1 and a2 share one log entry, each behind a one-byte length.
        assert_eq!(
            (listed[1].snapshots, listed[1].size),
            (0, len(&a1) + len(&a2) + 2)
        );
        // through = None: b1 stayed in the log beside b's snapshot.
        assert_eq!(
            (listed[2].snapshots, listed[2].size),
            (1, b_snapshot.size + len(&b1) + len(&b2))
        );
        assert_eq!(listed[0].snapshots, 1);
        // Updates count those in the latest snapshot and in the log.
        assert_eq!(listed[1].updates, 2, "a: two updates in one log entry");
        assert_eq!(listed[2].updates, b_snapshot.updates + 2);

        let before = listed[1].updated_at;
        tokio::time::sleep(Duration::from_millis(20)).await;
        store
            .append(&[pending(&a, w.insert(0, "!"))])
            .await
            .unwrap();
        let after = store.rooms().await.unwrap();
        assert!(after[1].updated_at > before, "append moves updated_at");

        // One room alone says the same as the listing.
        for summary in &after {
            let single = store.room_summary(&summary.room).await.unwrap();
            assert_eq!(single.as_ref(), Some(summary));
        }
        assert_eq!(store.room_summary(&room("nope")).await.unwrap(), None);
    }

    pub async fn odd_room_names_round_trip(Ctx { store, .. }: Ctx) {
        let longest = "é".repeat(128); // exactly 256 bytes
        let names = [
            "it's \"quoted\"",
            "'; DROP TABLE rooms; --",
            "\\x00 not a nul",
            "team/a/../b/",
            "%_ like wildcards *?",
            "🦀 ノート ✓",
            " leading and trailing ",
            longest.as_str(),
        ];
        let rooms: Vec<RoomName> = names.iter().map(|n| room(n)).collect();
        let w = Writer::new(1);
        for (i, r) in rooms.iter().enumerate() {
            let id = store
                .append(&[pending(r, w.insert(0, &i.to_string()))])
                .await
                .unwrap()[0];
            if i % 2 == 0 {
                store
                    .write_snapshot(snapshot_of(r, &w.state(), None, Some(id)), 2)
                    .await
                    .unwrap();
            }
        }
        for (i, r) in rooms.iter().enumerate() {
            let loaded = store.load(r).await.unwrap();
            if i % 2 == 0 {
                assert_eq!(loaded.snapshot.as_ref().unwrap().info.room, *r);
                assert!(loaded.updates.is_empty());
            } else {
                assert_eq!(
                    loaded.updates.len(),
                    1,
                    "room {r:?} sees only its own entry"
                );
            }
            assert_eq!(
                store.snapshots(r).await.unwrap().len(),
                usize::from(i % 2 == 0)
            );
        }
        let mut expected = rooms.clone();
        expected.sort();
        let listed: Vec<_> = store
            .rooms()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.room)
            .collect();
        assert_eq!(listed, expected);

        assert!(store.delete_room(&rooms[1]).await.unwrap());
        assert_eq!(store.rooms().await.unwrap().len(), rooms.len() - 1);
        assert!(store.load(&rooms[0]).await.unwrap().snapshot.is_some());
    }

    pub async fn concurrent_writers_lose_nothing(Ctx { store, .. }: Ctx) {
        // Two writers (two server processes) append and compact the same
        // room at once. Each compacts from its own state, folding the log up
        // to its own latest append, which covers entries of the other writer
        // it has never seen: the store must merge them, never drop them.
        const EDITS: usize = 40;
        let r = room("contended");
        let writers = (1..=2u64).map(|client| {
            let store = Arc::clone(&store);
            let r = r.clone();
            tokio::spawn(async move {
                let w = Writer::new(client);
                let mut base = None;
                for i in 0..EDITS {
                    let update = w.set(&format!("c{client}-{i}"), "x");
                    let id = store.append(&[pending(&r, update)]).await.unwrap()[0];
                    if i % 4 == 3 {
                        store
                            .write_snapshot(snapshot_of(&r, &w.state(), base, Some(id)), 2)
                            .await
                            .unwrap();
                    }
                    if i % 10 == 9 {
                        // A resync: now this writer's state contains the
                        // latest snapshot, which may become its base.
                        let stored = store.load(&r).await.unwrap();
                        w.apply_stored(&stored);
                        base = stored.snapshot.as_ref().map(|s| s.info.id);
                    }
                }
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.unwrap();
        }

        let stored = store.load(&r).await.unwrap();
        let doc = rebuild(&stored);
        let Any::Map(map) = doc.map_json() else {
            panic!("map is a map")
        };
        for client in 1..=2 {
            for i in 0..EDITS {
                let key = format!("c{client}-{i}");
                assert!(map.contains_key(&key), "edit {key} survived");
            }
        }
        assert_eq!(map.len(), 2 * EDITS);
        // Each log entry was folded exactly once.
        let folded = stored.snapshot.as_ref().map_or(0, |s| s.info.updates);
        assert_eq!(
            folded + i64::try_from(stored.updates.len()).unwrap(),
            2 * EDITS as i64
        );
    }

    pub async fn reopening_keeps_data(Ctx { store, url }: Ctx) {
        let r = room("durable");
        let w = Writer::new(1);
        let id = store
            .append(&[pending(&r, w.insert(0, "kept"))])
            .await
            .unwrap()[0];
        store
            .write_snapshot(snapshot_of(&r, &w.state(), None, Some(id)), 3)
            .await
            .unwrap();
        store
            .append(&[pending(&r, w.insert(4, "!"))])
            .await
            .unwrap();
        store.ping().await.unwrap();

        // A second process on the same database: migrating again is a no-op.
        let again = crdt_store::connect(&url).await.unwrap();
        again.migrate().await.unwrap();
        assert_eq!(again.backend(), store.backend());
        assert_eq!(rebuild(&again.load(&r).await.unwrap()).text(), "kept!");
    }
}

// ---------------------------------------------------------------------------
// Backend-specific behaviour.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_memory_database_works() {
    let store = crdt_store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    store.ping().await.unwrap();
    let r = room("in memory");
    let w = Writer::new(1);
    let ids = store
        .append(&[
            pending(&r, w.insert(0, "abc")),
            pending(&r, w.set("k", "v")),
        ])
        .await
        .unwrap();
    // The single connection is kept: data written survives idle time.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let info = store
        .write_snapshot(snapshot_of(&r, &w.state(), None, Some(ids[1])), 2)
        .await
        .unwrap();
    let loaded = store.load(&r).await.unwrap();
    assert_eq!(loaded.snapshot.as_ref().unwrap().info, info);
    assert_eq!(rebuild(&loaded).text(), "abc");
    assert_eq!(store.rooms().await.unwrap().len(), 1);

    // Every connect is its own database.
    let other = crdt_store::connect("sqlite::memory:").await.unwrap();
    assert!(other.rooms().await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_that_is_down_fails_fast_and_transient() {
    let started = Instant::now();
    // Nothing listens on port 1.
    let err = match crdt_store::connect("postgres://postgres@127.0.0.1:1/crdt").await {
        Ok(_) => panic!("connected to a closed port"),
        Err(err) => err,
    };
    assert!(err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = match crdt_store::connect("mysql://u:secret@h/db").await {
        Ok(_) => panic!("mysql is not supported"),
        Err(err) => err,
    };
    assert!(matches!(&err, crdt_store::StoreError::UnsupportedUrl(url) if !url.contains("secret")));
    assert!(!err.is_transient());
}

#[test]
fn test_database_urls_keep_their_parameters() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/admin?sslmode=disable", "t2"),
        "postgres://u:p@h/t2?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t3"), "postgres://h/t3");
}
