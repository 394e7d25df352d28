//! `--room-threads`: a room and its connections run on a thread of the
//! rooms' own, and with `0` everything still works on the shared pool.
//! Which thread did the work is read from the kernel's per-thread CPU
//! accounting, so the test sees what the server actually ran where.

use std::collections::HashMap;

use crate::support::{ServerProcess, YClient, sqlite_url, temp_dir};

/// Edits the writer makes: enough CPU (in a debug build) that the per-thread
/// accounting, in 10 ms ticks, shows where it went.
const EDITS: u32 = 20_000;

/// CPU ticks (user + system) per thread name prefix of process `pid`.
fn ticks_by_thread(pid: u32) -> HashMap<String, u64> {
    let mut ticks = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let used: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let kind = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *ticks.entry(kind.to_string()).or_default() += used;
    }
    ticks
}

/// Ticks threads of `kind` used between two readings.
fn used(before: &HashMap<String, u64>, after: &HashMap<String, u64>, kind: &str) -> u64 {
    after.get(kind).copied().unwrap_or(0) - before.get(kind).copied().unwrap_or(0)
}

/// One writer and three readers in one room; returns once every reader
/// holds every edit.
async fn busy_room(server: &ServerProcess) {
    let room = server.url("threads/busy");
    let mut writer = YClient::connect(&room).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(YClient::connect(&room).await);
    }
    for n in 0..EDITS {
        writer.insert("t", n, "x").await;
    }
    for (i, reader) in readers.iter_mut().enumerate() {
        reader
            .until(&format!("reader {i} to hold every edit"), |c| {
                c.text("t").len() == EDITS as usize
            })
            .await;
    }
}

const UNTHROTTLED: [&str; 4] = [
    "--rate-messages",
    "1000000",
    "--rate-message-burst",
    "1000000",
];

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_busy_room_runs_on_a_room_thread_not_on_the_shared_pool() {
    let dir = temp_dir();
    let mut args = vec!["--room-threads", "2", "--worker-threads", "2"];
    args.extend(UNTHROTTLED);
    let server = ServerProcess::start(&sqlite_url(dir.path()), &args).await;
    let before = ticks_by_thread(server.pid());
    busy_room(&server).await;
    let after = ticks_by_thread(server.pid());
    let rooms = used(&before, &after, "crdt-hub-rooms");
    let pool = used(&before, &after, "tokio-rt-worker");
    eprintln!("room threads used {rooms} ticks, the shared pool {pool}");
    // Reading, merging and writing to the peers all happen on the room's
    // thread; the pool only did the handshakes and the journal.
    assert!(
        rooms >= 10 && rooms > 2 * pool,
        "room threads used {rooms} ticks, the shared pool {pool}: {after:?}"
    );
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn with_no_room_threads_rooms_run_on_the_shared_pool() {
    let dir = temp_dir();
    let mut args = vec!["--room-threads", "0"];
    args.extend(UNTHROTTLED);
    let server = ServerProcess::start(&sqlite_url(dir.path()), &args).await;
    let before = ticks_by_thread(server.pid());
    busy_room(&server).await;
    let after = ticks_by_thread(server.pid());
    assert!(!after.contains_key("crdt-hub-rooms"), "{after:?}");
    let pool = used(&before, &after, "tokio-rt-worker");
    assert!(pool >= 10, "the shared pool used {pool} ticks: {after:?}");
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}
