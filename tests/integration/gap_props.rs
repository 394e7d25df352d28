//! Property tests where protocol meets storage: three writers edit, and
//! their updates reach one room in any order, through the WebSocket and the
//! HTTP API, duplicated, merged into updates with gaps, or never, while the
//! room compacts and the server restarts on the same database (SQLite and
//! Postgres). After every compaction and restart, what a joining client is
//! served equals what a reference document that received the same updates
//! integrated; once every update has arrived, it is the writers' whole
//! document.
//!
//! The reference integrates the delivered edits in the order they were made
//! (each edit after everything its writer had seen), taking only what
//! continues what it has: exactly what is complete, whatever the order of
//! arrival.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, MessageReader, SyncMessage};
use yrs::types::ToJson;
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

use crate::support::{PostgresDb, ServerOptions, TestServer, YClient, http_request, temp_dir};

/// One step of a case.
#[derive(Debug, Clone)]
enum Op {
    /// A writer edits its own document; the edit becomes one update.
    Edit {
        writer: usize,
        kind: u8,
        at: u8,
    },
    /// `to` receives everything `from` has (so `to`'s later edits build
    /// on `from`'s).
    Sync {
        from: usize,
        to: usize,
    },
    /// An edit (by index, modulo the edits so far) reaches the room.
    Deliver {
        edit: usize,
        websocket: bool,
    },
    /// Two edits reach the room merged into one update, with a gap when
    /// they are not adjacent.
    DeliverMerged {
        a: usize,
        b: usize,
    },
    Compact,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, any::<u8>(), any::<u8>()).prop_map(|(writer, kind, at)| Op::Edit { writer, kind, at }),
        2 => (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Sync { from, to }),
        5 => (any::<usize>(), any::<bool>()).prop_map(|(edit, websocket)| Op::Deliver { edit, websocket }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::DeliverMerged { a, b }),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

/// A case: its steps, and whether every edit is delivered at the end.
fn case() -> impl Strategy<Value = (Vec<Op>, bool)> {
    (proptest::collection::vec(op(), 1..40), any::<bool>())
}

/// The writers and every update they made, in the order they made them.
struct Writers {
    docs: Vec<Doc>,
    edits: Vec<Vec<u8>>,
}

impl Writers {
    fn new() -> Self {
        Self {
            docs: (0..3).map(|i| writer_doc(11 + i)).collect(),
            edits: Vec::new(),
        }
    }

    fn edit(&mut self, writer: usize, kind: u8, at: u8) {
        let doc = &self.docs[writer];
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        match kind % 4 {
            0 | 1 => {
                let word = ["ab", "cde", "f", "gh"][usize::from(at) % 4];
                text.insert(&mut txn, u32::from(at) % (len + 1), word);
            }
            2 if len > 0 => {
                let start = u32::from(at) % len;
                text.remove_range(&mut txn, start, (len - start).min(3));
            }
            _ => {
                map.insert(
                    &mut txn,
                    ["k", "l", "m"][usize::from(at) % 3],
                    i64::from(at),
                );
            }
        }
        let update = txn.encode_update_v1();
        drop(txn);
        if update != Update::EMPTY_V1 {
            self.edits.push(update);
        }
    }

    fn sync(&self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let state = self.docs[from]
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        self.docs[to]
            .transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
    }

    /// What a document holds that received the delivered edits: each, in
    /// the order made, as far as it continues what the document has. Its
    /// deletions apply whatever happens to its insertions, as in Yjs (what
    /// they delete was made before them, so it is here if it came).
    fn reference(&self, delivered: &BTreeSet<usize>) -> Doc {
        let doc = writer_doc(99);
        for &i in delivered {
            let update = Update::decode_v1(&self.edits[i]).unwrap();
            let have = doc.transact().state_vector();
            let continues = update
                .insertions(true)
                .iter()
                .all(|(client, runs)| runs.iter().all(|run| run.start <= have.get(client)));
            let update = if continues {
                update
            } else {
                // Its delete set alone: no structs, then the set.
                let mut deletions = vec![0];
                deletions.extend(update.delete_set().encode_v1());
                Update::decode_v1(&deletions).unwrap()
            };
            let mut txn = doc.transact_mut();
            txn.apply_update(update).unwrap();
            // What builds on, or deletes, an edit that never came stays out.
            txn.prune_pending();
        }
        doc
    }
}

/// A document as the server keeps one: no formatting clean-up of its own.
fn writer_doc(client: u64) -> Doc {
    Doc::with_options(yrs::Options {
        cleanup_formatting: false,
        ..yrs::Options::with_client_id(yrs::block::ClientID::new(client))
    })
}

/// What must be equal: the text, the map and the state vector.
fn content(doc: &Doc) -> (String, String, Vec<u8>) {
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let txn = doc.transact();
    let mut json = String::new();
    map.to_json(&txn).to_json(&mut json);
    // Keys in a canonical order: yrs lists a map's entries as it stores them.
    let json = serde_json::from_str::<serde_json::Value>(&json)
        .unwrap()
        .to_string();
    (text.get_string(&txn), json, txn.state_vector().encode_v1())
}

/// A socket that feeds updates into the room and knows when the room has
/// taken each one.
struct Feeder {
    client: YClient,
}

impl Feeder {
    async fn connect(server: &TestServer, room: &str) -> Self {
        let mut feeder = Self {
            client: YClient::connect(&server.url(room)).await,
        };
        // The answer to the SyncStep1 sent on connecting.
        feeder.wait_for_sync_step2().await;
        feeder
    }

    /// Sends `update` and returns once the room has handled it: the room
    /// answers a SyncStep1 after everything the socket sent before it.
    async fn send(&mut self, update: Vec<u8>) {
        self.client
            .send(YMessage::Sync(SyncMessage::Update(update)))
            .await;
        let sv = StateVector::default();
        self.client
            .send(YMessage::Sync(SyncMessage::SyncStep1(sv)))
            .await;
        self.wait_for_sync_step2().await;
    }

    async fn wait_for_sync_step2(&mut self) {
        loop {
            let frame =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.client.ws.next())
                    .await
                    .expect("the room answers in time")
                    .expect("the socket stays open")
                    .expect("a frame");
            let Message::Binary(bytes) = frame else {
                continue;
            };
            let mut decoder = DecoderV1::from(bytes.as_ref());
            let step2 = MessageReader::new(&mut decoder)
                .filter_map(Result::ok)
                .any(|m| matches!(m, YMessage::Sync(SyncMessage::SyncStep2(_))));
            if step2 {
                return;
            }
        }
    }
}

/// One case against a server on `database_url`; panics when what the room
/// serves is not what the reference holds.
async fn run_case(database_url: &str, room: &str, ops: Vec<Op>, deliver_all: bool) {
    let options = || ServerOptions {
        database_url: Some(database_url.to_string()),
        ..ServerOptions::unthrottled()
    };
    let mut server = TestServer::start_with(options()).await;
    let mut feeder = Feeder::connect(&server, room).await;
    let mut writers = Writers::new();
    let mut delivered = BTreeSet::new();
    let mut step = 0;
    for op in ops {
        step += 1;
        match op {
            Op::Edit { writer, kind, at } => writers.edit(writer, kind, at),
            Op::Sync { from, to } => writers.sync(from, to),
            Op::Deliver { edit, websocket } => {
                if writers.edits.is_empty() {
                    continue;
                }
                let i = edit % writers.edits.len();
                deliver(
                    &server,
                    &mut feeder,
                    room,
                    writers.edits[i].clone(),
                    websocket,
                )
                .await;
                delivered.insert(i);
            }
            Op::DeliverMerged { a, b } => {
                if writers.edits.is_empty() {
                    continue;
                }
                let (a, b) = (a % writers.edits.len(), b % writers.edits.len());
                let merged = yrs::merge_updates_v1([
                    writers.edits[a].as_slice(),
                    writers.edits[b].as_slice(),
                ])
                .unwrap();
                deliver(&server, &mut feeder, room, merged, a % 2 == 0).await;
                delivered.extend([a, b]);
            }
            Op::Compact => {
                let response = http_request(
                    server.addr,
                    "POST",
                    &format!("/api/rooms/{room}/snapshot"),
                    &[],
                    vec![],
                )
                .await;
                assert_eq!(response.status, 201, "step {step}: compaction failed");
                assert_served(&server, room, &writers.reference(&delivered), step).await;
            }
            Op::Restart => {
                drop(feeder);
                server.stop().await;
                server = TestServer::start_with(options()).await;
                feeder = Feeder::connect(&server, room).await;
                assert_served(&server, room, &writers.reference(&delivered), step).await;
            }
        }
    }
    assert_served(&server, room, &writers.reference(&delivered), step).await;
    if deliver_all {
        // The missing parts arrive, newest first: everything completes.
        for i in (0..writers.edits.len()).rev() {
            deliver(
                &server,
                &mut feeder,
                room,
                writers.edits[i].clone(),
                i % 2 == 0,
            )
            .await;
        }
        drop(feeder);
        server.stop().await;
        server = TestServer::start_with(options()).await;
        let everything = writers.reference(&(0..writers.edits.len()).collect());
        for (i, writer) in writers.docs.iter().enumerate() {
            for other in 0..3 {
                writers.sync(other, i);
            }
            assert_eq!(
                content(writer),
                content(&everything),
                "the reference is not the writers' document"
            );
        }
        assert_served(&server, room, &everything, step + 1).await;
    }
    server.stop().await;
}

async fn deliver(
    server: &TestServer,
    feeder: &mut Feeder,
    room: &str,
    update: Vec<u8>,
    websocket: bool,
) {
    if websocket {
        feeder.send(update).await;
    } else {
        let response = http_request(
            server.addr,
            "POST",
            &format!("/api/rooms/{room}/update"),
            &[],
            update,
        )
        .await;
        assert_eq!(response.status, 200, "POST update: {:?}", response.body);
    }
}

/// A client joining now is served what `reference` holds, and the room's
/// JSON says the same.
async fn assert_served(server: &TestServer, room: &str, reference: &Doc, step: usize) {
    let mut joiner = YClient::connect(&server.url(room)).await;
    let expected = content(reference);
    for _ in 0..50 {
        if content(joiner.doc()) == expected {
            break;
        }
        joiner.pump_for(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        content(joiner.doc()),
        expected,
        "step {step}: a joining client is served something else"
    );
    let state = http_request(
        server.addr,
        "GET",
        &format!("/api/rooms/{room}/state"),
        &[],
        vec![],
    )
    .await;
    let served = Doc::new();
    served
        .transact_mut()
        .apply_update(Update::decode_v1(&state.body).unwrap())
        .unwrap();
    assert_eq!(
        content(&served),
        expected,
        "step {step}: the room serves something else"
    );
}

fn run_properties(database_url: &str, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // PROPTEST_CASES runs more (or fewer) cases than CI's.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let n = AtomicUsize::new(0);
    runner
        .run(&case(), |(ops, deliver_all)| {
            // A room per run, shrinking included: the database is shared.
            let room = format!("gaps-{}", n.fetch_add(1, Ordering::Relaxed));
            runtime.block_on(run_case(database_url, &room, ops, deliver_all));
            Ok(())
        })
        .unwrap();
}

#[test]
fn what_is_served_after_compaction_and_restart_is_what_is_complete_sqlite() {
    let dir = temp_dir();
    let url = format!("sqlite://{}", dir.path().join("gaps.db").display());
    run_properties(&url, 24);
}

#[test]
fn what_is_served_after_compaction_and_restart_is_what_is_complete_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(PostgresDb::create());
    run_properties(&db.url, 24);
    drop(runtime);
}
