//! Measures the durable write path and room loading against a real database
//! (issue 3's numbers for BENCHMARKS.md):
//!
//! ```sh
//! cargo run --release -p crdt-hub --example storage_bench -- sqlite:///tmp/bench.db
//! cargo run --release -p crdt-hub --example storage_bench -- postgres://postgres@127.0.0.1:5432/bench
//! ```
//!
//! 1. Write path: 200 000 real one-keystroke Yjs updates over 20 rooms go
//!    through the group-commit journal as fast as it takes them; reports
//!    updates/s and the average batch size.
//! 2. Load: a room whose snapshot is a 10 MB document, and a room with
//!    100 000 logged updates, each loaded the way the server loads rooms.

use std::time::{Duration, Instant};

use bytes::Bytes;
use crdt_hub::persist::{self, Journal, JournalConfig};
use crdt_store::{NewSnapshot, PendingUpdate, RoomName};
use yrs::{Doc, ReadTxn, Text, Transact};

fn keystrokes(count: usize) -> Vec<Bytes> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    (0..count)
        .map(|i| {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, (i % 50) as u32, "x");
            Bytes::from(txn.encode_update_v1())
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite:///tmp/crdt-hub-storage-bench.db".into());
    if url.starts_with("postgres") {
        // A fresh database each run.
        let (base, name) = url.rsplit_once('/').expect("postgres://…/DB");
        let mut admin =
            <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{base}/postgres")).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    let store = crdt_store::connect(&url).await?;
    println!(
        "backend: {} ({})",
        store.backend(),
        crdt_store::redact(&url)
    );

    // 1. Write path.
    let rooms: Vec<RoomName> = (0..20)
        .map(|i| RoomName::parse(format!("bench-{i}")).unwrap())
        .collect();
    let total = 200_000;
    let updates = keystrokes(total / rooms.len());
    let (journal, task) = Journal::start(store.clone(), JournalConfig::default());
    let started = Instant::now();
    for update in &updates {
        for room in &rooms {
            journal.append(room, update.clone());
        }
    }
    while journal.status().written_updates < total as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let status = journal.status();
    println!(
        "write path: {total} updates in {:.2} s = {:.0} updates/s; {} batches, {:.0} updates per batch",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        status.written_batches,
        status.written_updates as f64 / status.written_batches as f64
    );
    task.drain(Duration::from_secs(30)).await;

    // 2a. Load a room with a 10 MB snapshot.
    let big = RoomName::parse("bench-10mb").unwrap();
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    {
        let chunk = "lorem ipsum dolor sit amet ".repeat(40);
        let mut txn = doc.transact_mut();
        while txn.encode_update_v1().len() < 10 << 20 {
            let len = text.len(&txn);
            for _ in 0..200 {
                text.insert(&mut txn, len, &chunk);
            }
        }
    }
    let state = doc
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    store
        .write_snapshot(
            NewSnapshot {
                room: &big,
                state: &state,
                base: None,
                through: None,
                unlogged_updates: 1,
                restored_from: None,
            },
            20,
        )
        .await?;
    let started = Instant::now();
    let loaded = persist::load(&store, &big).await?;
    println!(
        "load: {:.1} MB snapshot in {:.0} ms",
        loaded.stored_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64() * 1000.0
    );

    // 2b. Load a room with 100 000 logged updates.
    let logged = RoomName::parse("bench-100k-log").unwrap();
    for chunk in keystrokes(100_000).chunks(10_000) {
        let batch: Vec<PendingUpdate> = chunk
            .iter()
            .map(|data| PendingUpdate {
                room: logged.clone(),
                data: data.clone(),
            })
            .collect();
        store.append(&batch).await?;
    }
    let started = Instant::now();
    let loaded = persist::load(&store, &logged).await?;
    println!(
        "load: 100000 logged updates ({:.1} MB) in {:.0} ms",
        loaded.stored_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
