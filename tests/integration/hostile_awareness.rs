//! The awareness attacks of the red-team pass (issue 27, item 3), replayed
//! against the real binary with the `read` token they were found with.
//! Each must now fail, and two honest clients editing in another room must
//! keep syncing while it runs. Loopback only, bounded in size and time.

use std::time::{Duration, Instant};

use crdt_hub::auth::{Role, mint_hs256};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use yrs::block::ClientID;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message as YMessage};
use yrs::updates::decoder::Decode;

use crate::metrics::sample;
use crate::support::{Bystanders, ServerProcess, TIMEOUT, YClient, sqlite_url, temp_dir};

const SECRET: &str = "hostile-awareness-secret";

async fn start() -> (ServerProcess, tempfile::TempDir) {
    let dir = temp_dir();
    // Each attack closes its sender and the test reconnects at once from
    // the same address: the refused-update waits are off.
    let server = ServerProcess::start(
        &sqlite_url(dir.path()),
        &["--auth-secret", SECRET, "--refusal-max-delay", "0"],
    )
    .await;
    (server, dir)
}

/// The URL of `room` with a token of `role` for it.
fn url(server: &ServerProcess, room: &str, role: Role) -> String {
    let token = mint_hs256(
        SECRET,
        vec![room.to_string()],
        role,
        Duration::from_secs(600),
    )
    .unwrap();
    format!("{}?token={token}", server.url(room))
}

/// An awareness frame setting each `(client, clock, json)`.
fn awareness_frame(entries: impl IntoIterator<Item = (u64, u32, String)>) -> Vec<u8> {
    let clients = entries
        .into_iter()
        .map(|(client, clock, json)| {
            let entry = AwarenessUpdateEntry {
                clock,
                json: json.into(),
            };
            (ClientID::new(client), entry)
        })
        .collect();
    crdt_hub::protocol::encode_awareness(&AwarenessUpdate { clients }).to_vec()
}

fn name_of(client: &YClient, id: ClientID) -> Option<String> {
    let state = client.awareness.state::<Value>(id)?;
    Some(state["user"]["name"].as_str()?.to_string())
}

/// Reads (and drops) what a fresh client is sent until the answer to its
/// sync step 1: its greeting (with the room's awareness) comes before it.
async fn skip_greeting(client: &mut YClient) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("the sync answer")
            .expect("socket open")
            .expect("socket open")
            .into_data();
        if frame.starts_with(&[0, 1]) {
            return;
        }
    }
}

/// Waits until the server has handled everything `client` sent: it answers
/// an awareness query only after the frames before it. The client must
/// have had its greeting ([`skip_greeting`]), and nobody else in the room
/// may change their presence meanwhile.
async fn barrier(client: &mut YClient) {
    use futures_util::SinkExt;
    client.ws.send(Message::binary(vec![3u8])).await.unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("the awareness answer")
            .expect("socket open")
            .expect("socket open");
        if frame.into_data().first() == Some(&1) {
            return;
        }
    }
}

/// The server's resident memory, from /proc.
fn rss_bytes(server: &ServerProcess) -> u64 {
    let pid = server.child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// What a joiner of `url` is greeted with: the awareness frame's bytes and
/// states, and how long its document sync took.
async fn join_and_measure(url: &str) -> (usize, usize, Duration) {
    let started = Instant::now();
    let mut joiner = YClient::connect(url).await;
    let (mut bytes, mut states) = (0, 0);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, joiner.ws.next())
            .await
            .expect("the sync answer")
            .unwrap()
            .unwrap()
            .into_data();
        match frame.first() {
            Some(1) => {
                bytes += frame.len();
                let Ok(YMessage::Awareness(update)) = YMessage::decode_v1(&frame) else {
                    panic!("a malformed awareness frame");
                };
                states += update.clients.len();
            }
            // Sync step 2: the document is there.
            Some(0) if frame.get(1) == Some(&1) => return (bytes, states, started.elapsed()),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fake_client_ids_is_capped_and_joiners_sync_at_once() {
    let (server, _dir) = start().await;
    let room = "docs/flood";
    let mut bystanders = Bystanders::join(&url(&server, "docs/bystanders", Role::Write)).await;
    let mut honest = YClient::connect(&url(&server, room, Role::Write)).await;
    skip_greeting(&mut honest).await;
    honest.insert("t", 0, "the document").await;
    honest
        .announce(serde_json::json!({"user": {"name": "ann"}}))
        .await;
    barrier(&mut honest).await;
    let before = rss_bytes(&server);

    // 2,000 client ids with 8 KB states, 50 per message, twice (the
    // second round renews them with a higher clock): 32 MB, about the
    // default rate limits' burst.
    let mut attacker = YClient::connect(&url(&server, room, Role::Read)).await;
    skip_greeting(&mut attacker).await;
    let flood = async move {
        let state = format!(r#"{{"user":{{"name":"{}"}}}}"#, "x".repeat(8_000));
        for clock in 1..=2 {
            for first in (0..2000u64).step_by(50) {
                let entries = (first..first + 50).map(|id| (1_000_000 + id, clock, state.clone()));
                attacker.send_raw(awareness_frame(entries)).await;
            }
        }
        barrier(&mut attacker).await;
        attacker
    };
    let started = Instant::now();
    let attacker = bystanders.keep_editing_while(flood).await;
    let flood_took = started.elapsed();
    bystanders.assert_kept_syncing();
    let after = rss_bytes(&server);

    let (bytes, states, sync) = join_and_measure(&url(&server, room, Role::Read)).await;
    eprintln!(
        "flood of 2,000 ids x 8 KB x 2 rounds took {flood_took:?}; server RSS {} -> {} MiB; \
         a joiner got {states} states in {bytes} bytes and synced in {sync:?}",
        before >> 20,
        after >> 20
    );
    // The attacker's first four ids and ann; nothing else.
    assert_eq!(states, 5, "states in a joiner's greeting");
    assert!(bytes < 5 * 8_100, "{bytes} bytes of awareness greeting");
    assert!(sync < Duration::from_secs(2), "joiner synced in {sync:?}");
    assert!(
        after.saturating_sub(before) < 32 << 20,
        "the server grew by {} MiB",
        after.saturating_sub(before) >> 20
    );
    let ignored = sample(
        server.addr,
        "crdt_hub_awareness_ignored_total{reason=\"client_cap\"}",
    )
    .await;
    assert_eq!(ignored, 2.0 * (2000.0 - 4.0));
    // The attacker stays connected (a reader may share presence), capped.
    assert!(attacker.closed.is_none());
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
    assert_eq!(
        logs.matches("awareness entries ignored").count(),
        1,
        "logged once per connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofer_can_neither_rename_nor_remove_another_connections_presence() {
    let (server, _dir) = start().await;
    let room = "docs/spoof";
    let mut bystanders = Bystanders::join(&url(&server, "docs/bystanders", Role::Write)).await;
    let mut victim = YClient::connect(&url(&server, room, Role::Write)).await;
    let mut observer = YClient::connect(&url(&server, room, Role::Write)).await;
    victim
        .announce(serde_json::json!({"user": {"name": "victim"}}))
        .await;
    let id = victim.awareness.client_id();
    observer
        .until("the victim's presence", |c| {
            name_of(c, id).as_deref() == Some("victim")
        })
        .await;

    // Renamed with a far higher clock, then removed; from a reader.
    let mut spoofer = YClient::connect(&url(&server, room, Role::Read)).await;
    skip_greeting(&mut spoofer).await;
    let fake = r#"{"user":{"name":"renamed by a spoofer"}}"#.to_string();
    let spoof = async move {
        spoofer
            .send_raw(awareness_frame([(id.get(), 1000, fake)]))
            .await;
        spoofer
            .send_raw(awareness_frame([(id.get(), 1001, "null".to_string())]))
            .await;
        barrier(&mut spoofer).await;
        spoofer
    };
    let spoofer = bystanders.keep_editing_while(spoof).await;
    bystanders.assert_kept_syncing();
    assert!(spoofer.closed.is_none());

    // The victim renews its presence (clock 2) and the observer takes it:
    // had the observer received the spoofed clock 1000, it would ignore 2.
    victim
        .announce(serde_json::json!({"user": {"name": "victim, renewed"}}))
        .await;
    observer
        .until("the victim's renewal", |c| {
            name_of(c, id).as_deref() == Some("victim, renewed")
        })
        .await;
    // The victim's own client never adopted the fake state either.
    victim.pump_for(Duration::from_millis(200)).await;
    let own: Value = victim.awareness.local_state().unwrap();
    assert_eq!(own["user"]["name"], "victim, renewed");
    // A joiner sees the victim as it set itself.
    let mut joiner = YClient::connect(&url(&server, room, Role::Read)).await;
    joiner
        .until("the victim's presence", |c| name_of(c, id).is_some())
        .await;
    assert_eq!(name_of(&joiner, id).as_deref(), Some("victim, renewed"));
    let ignored = sample(
        server.addr,
        "crdt_hub_awareness_ignored_total{reason=\"not_owner\"}",
    )
    .await;
    assert_eq!(ignored, 2.0);

    // Once the victim leaves, its presence goes (as before).
    drop(victim);
    observer
        .until("the victim's removal", |c| {
            c.awareness.state::<Value>(id).is_none()
        })
        .await;
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_that_are_not_json_or_too_big_close_the_sender_and_reach_no_one() {
    let (server, _dir) = start().await;
    let room = "docs/garbage";
    let mut bystanders = Bystanders::join(&url(&server, "docs/bystanders", Role::Write)).await;
    let mut observer = YClient::connect(&url(&server, room, Role::Write)).await;
    let attacks: Vec<(u64, String, u16)> = vec![
        (9001, "not json {".into(), 1002),
        // The red team's 100,000 levels: over the size limit first.
        (9002, "[".repeat(100_000), 1009),
        // Deeper than --max-awareness-depth (64), yet small.
        (9003, format!("{}{}", "[".repeat(65), "]".repeat(65)), 1002),
        // Valid, but longer than --max-awareness-bytes (64 KiB).
        (9004, format!("\"{}\"", "y".repeat(70_000)), 1009),
    ];
    let mut senders = Vec::new();
    for _ in &attacks {
        senders.push(YClient::connect(&url(&server, room, Role::Read)).await);
    }
    let attack = async move {
        let mut codes = Vec::new();
        for ((client, state, _), mut sender) in attacks.into_iter().zip(senders) {
            sender.send_raw(awareness_frame([(client, 1, state)])).await;
            codes.push(sender.close_code().await);
        }
        codes
    };
    let codes = bystanders.keep_editing_while(attack).await;
    bystanders.assert_kept_syncing();
    assert_eq!(codes, [Some(1002), Some(1009), Some(1002), Some(1009)]);

    // An honest state set after them arrives; none of theirs ever did.
    let mut honest = YClient::connect(&url(&server, room, Role::Write)).await;
    honest
        .announce(serde_json::json!({"user": {"name": "bo"}}))
        .await;
    let bo = honest.awareness.client_id();
    observer
        .until("bo's presence", |c| name_of(c, bo).is_some())
        .await;
    for client in 9001..=9004 {
        assert!(observer.awareness.meta(ClientID::new(client)).is_none());
    }
    for (series, expected) in [
        (
            "crdt_hub_connections_closed_total{code=\"1002\",reason=\"bad_awareness\"}",
            2.0,
        ),
        (
            "crdt_hub_connections_closed_total{code=\"1009\",reason=\"awareness_too_large\"}",
            2.0,
        ),
    ] {
        assert_eq!(sample(server.addr, series).await, expected, "{series}");
    }
    server.terminate().await;
}
