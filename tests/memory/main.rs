//! Memory that must come back: rooms whose documents hold subdocuments are
//! loaded and unloaded many times, through every path that builds a
//! document (a room, a stored room loaded whole for an export, a restore's
//! copies, JSON rendering), and the process's live heap returns to where it
//! was. yrs 0.28.1 alone keeps each such document forever (~200 KB per
//! room here; see `crdt_hub::subdocs`).
//!
//! A counting global allocator measures live bytes, so the tests of this
//! binary run one at a time (a lock), and nothing else runs in it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use bytes::Bytes;
use crdt_hub::protocol::{ClientMessage, DocUpdate};
use crdt_hub::room::core::{Access, Room, doc_from_updates};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, StateVector, Text, Transact, Update};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Rooms per test: a leak of 100 KB per room is 20 MB, ten times the
/// tolerance.
const ROOMS: usize = 200;
const TOLERANCE: isize = 2 << 20;

/// A stored room's state: 200 KB of text and, with `subdoc`, a map entry
/// holding a subdocument (as `doc.getMap('m').set('sub', new Y.Doc())`).
fn stored_state(subdoc: bool) -> Vec<u8> {
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, &"lorem ipsum ".repeat(200_000 / 12));
    if subdoc {
        map.insert(&mut txn, "sub", Doc::new());
    }
    let state = txn.encode_state_as_update_v1(&StateVector::default());
    drop(txn);
    crdt_hub::subdocs::release(&doc);
    state
}

/// Live heap bytes that `cycle` leaves behind, per run, after a warm-up run.
fn leaked_per_run(runs: usize, mut cycle: impl FnMut()) -> isize {
    cycle();
    let before = LIVE.load(Relaxed);
    for _ in 0..runs {
        cycle();
    }
    let after = LIVE.load(Relaxed);
    assert!(
        after - before < TOLERANCE,
        "{runs} runs left {} bytes behind ({} per run)",
        after - before,
        (after - before) / runs as isize
    );
    (after - before) / runs as isize
}

fn update(bytes: Vec<u8>) -> ClientMessage {
    ClientMessage::DocUpdate(DocUpdate {
        update: Update::decode_v1(&bytes).unwrap(),
        encoded: Bytes::from(bytes),
    })
}

/// A room's life: loaded from storage, a peer joins and edits, it leaves,
/// the room unloads.
fn room_life(state: &[u8]) {
    let stored = doc_from_updates([state]).unwrap();
    let mut room = Room::with_held(stored);
    room.join(1, Access::ReadWrite);
    let edit = {
        let doc = Doc::with_client_id(2);
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello ");
        txn.encode_update_v1()
    };
    room.receive(1, vec![update(edit)]).unwrap();
    let _ = room.encode_state();
    room.leave(1);
    drop(room);
}

#[test]
fn rooms_holding_subdocuments_give_their_memory_back() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let with = stored_state(true);
    let without = stored_state(false);
    let plain = leaked_per_run(ROOMS, || room_life(&without));
    let subdoc = leaked_per_run(ROOMS, || room_life(&with));
    eprintln!("left behind per room: {plain} B without a subdocument, {subdoc} B with one");
}

#[test]
fn stored_rooms_read_whole_restores_and_json_give_their_memory_back() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("memory.db").display());
    let with = stored_state(true);
    let room = crdt_store::RoomName::parse("notes").unwrap();
    let store = runtime.block_on(async {
        let store = crdt_store::connect(&url).await.unwrap();
        store
            .append(&[crdt_store::PendingUpdate {
                room: room.clone(),
                data: Bytes::from(with.clone()),
            }])
            .await
            .unwrap();
        store
    });
    // What `snapshot export` does: the room read whole, encoded, rendered.
    eprintln!("export");
    leaked_per_run(ROOMS / 4, || {
        runtime.block_on(async {
            let loaded = crdt_hub::persist::load_whole(&store, &room).await.unwrap();
            let state = loaded.doc.encode_state().unwrap();
            let json = crdt_hub::doc_json::doc_to_json(&loaded.doc.doc);
            assert!(json["t"].as_str().unwrap().starts_with("lorem"));
            assert!(!state.is_empty());
        });
    });
    // What a restore computes: the current state and the version loaded,
    // and the update between them (on a private copy).
    let version = {
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "an older version");
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    eprintln!("restore");
    leaked_per_run(ROOMS / 4, || {
        let current = doc_from_updates([with.as_slice()]).unwrap();
        let target = doc_from_updates([version.as_slice()]).unwrap();
        let update = crdt_hub::restore_diff::restore_update(&current.doc, &target.doc).unwrap();
        assert!(update.is_some());
    });
}
