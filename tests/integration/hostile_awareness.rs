//! The awareness attacks of the red-team pass (issue 27, item 3), replayed
//! against the real binary with the `read` token they were found with.
//! Each must now fail, and two honest clients editing in another room must
//! keep syncing while it runs. Loopback only, bounded in size and time.

use std::time::{Duration, Instant};

use crdt_hub::auth::{Role, mint_hs256};
use serde_json::Value;
use yrs::block::ClientID;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message as YMessage};

use crate::metrics::sample;
use crate::support::{ServerProcess, YClient, sqlite_url, temp_dir};

const SECRET: &str = "hostile-awareness-secret";

async fn start() -> (ServerProcess, tempfile::TempDir) {
    let dir = temp_dir();
    let server = ServerProcess::start(&sqlite_url(dir.path()), &["--auth-secret", SECRET]).await;
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

/// Sets `client`'s own presence and sends it, as y-websocket does.
async fn announce(client: &mut YClient, state: Value) {
    client.awareness.set_local_state(state).unwrap();
    let update = client.awareness.update().unwrap();
    client.send(YMessage::Awareness(update)).await;
}

fn name_of(client: &YClient, id: ClientID) -> Option<String> {
    let state = client.awareness.state::<Value>(id)?;
    Some(state["user"]["name"].as_str()?.to_string())
}

/// Two honest clients in a room of their own: one edits, and the time
/// until the other sees each edit is the slowest the attack made it.
struct Bystanders {
    writer: YClient,
    reader: YClient,
    typed: usize,
    slowest: Duration,
}

impl Bystanders {
    async fn join(server: &ServerProcess) -> Self {
        let room = "docs/bystanders";
        Self {
            writer: YClient::connect(&url(server, room, Role::Write)).await,
            reader: YClient::connect(&url(server, room, Role::Write)).await,
            typed: 0,
            slowest: Duration::ZERO,
        }
    }

    /// Edits and waits for the edit on the other side until `attack`
    /// finishes; returns what it returned.
    async fn keep_editing_while<T: Send + 'static>(
        &mut self,
        attack: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let attack = tokio::spawn(attack);
        loop {
            self.round_trip().await;
            if attack.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.round_trip().await;
        attack.await.unwrap()
    }

    async fn round_trip(&mut self) {
        let started = Instant::now();
        self.writer.insert("t", 0, "x").await;
        self.typed += 1;
        let typed = self.typed;
        self.reader
            .until("the bystander's edit", |c| c.text("t").len() == typed)
            .await;
        self.slowest = self.slowest.max(started.elapsed());
    }

    fn assert_kept_syncing(&self) {
        eprintln!(
            "bystanders: {} edits, slowest {:?}",
            self.typed, self.slowest
        );
        assert!(self.typed >= 2);
        assert!(
            self.slowest < Duration::from_secs(3),
            "an honest edit took {:?} to arrive during the attack",
            self.slowest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_that_are_not_json_or_too_big_close_the_sender_and_reach_no_one() {
    let (server, _dir) = start().await;
    let room = "docs/garbage";
    let mut bystanders = Bystanders::join(&server).await;
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
    announce(&mut honest, serde_json::json!({"user": {"name": "bo"}})).await;
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
