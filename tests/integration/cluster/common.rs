//! What the cluster tests share: nodes on a bus (the shared Redis, or a
//! Redis Cluster of the test's own), and clients that edit and converge.

use std::time::Duration;

use base64::Engine;
use rand::Rng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Text, Transact};

use super::redis_cluster::RedisCluster;
use crate::support::{PostgresDb, ServerProcess, YClient, http_get, http_request};

/// Which Redis a test's nodes share.
pub(super) enum Bus {
    /// The shared Redis at 127.0.0.1:6379 (each test uses its own prefix).
    Single,
    /// A Redis Cluster of three masters, started for the test.
    Cluster(RedisCluster),
}

impl Bus {
    pub(super) async fn cluster() -> Self {
        Self::Cluster(RedisCluster::start().await)
    }

    /// A fresh database, a key prefix of `name`'s, and two nodes on both:
    /// how most cluster tests begin. Keep the database alive as long as
    /// the nodes.
    pub(super) async fn two_nodes(
        &self,
        name: &str,
    ) -> (PostgresDb, String, ServerProcess, ServerProcess) {
        let db = PostgresDb::create().await;
        let prefix = unique_prefix(name);
        let a = self.start_node(&db, &prefix, &[]).await;
        let b = self.start_node(&db, &prefix, &[]).await;
        (db, prefix, a, b)
    }

    /// Starts a node on this bus.
    pub(super) async fn start_node(
        &self,
        db: &PostgresDb,
        prefix: &str,
        extra: &[&str],
    ) -> ServerProcess {
        match self {
            Self::Single => start_node(&db.url, REDIS, prefix, extra).await,
            Self::Cluster(cluster) => {
                let flags = cluster.node_flags();
                let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
                args.extend_from_slice(extra);
                start_node(&db.url, &cluster.url(), prefix, &args).await
            }
        }
    }

    /// Stops the nodes (they would publish again) and deletes the test's
    /// keys (a test's own Redis Cluster goes with the test).
    pub(super) async fn finish(&self, nodes: Vec<ServerProcess>, prefix: &str) {
        match self {
            Self::Single => finish(nodes, prefix).await,
            Self::Cluster(_) => {
                for mut node in nodes {
                    let _ = node.child.kill().await;
                }
            }
        }
    }
}

pub(super) const REDIS: &str = "redis://127.0.0.1:6379";
pub(super) const REDIS_ADDR: &str = "127.0.0.1:6379";
/// Longest the nodes may take to agree again.
pub(super) const CONVERGE: Duration = Duration::from_secs(25);

pub(super) fn unique_prefix(test: &str) -> String {
    format!(
        "crdt-hub-test-{test}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

pub(super) async fn start_node(
    database_url: &str,
    redis_url: &str,
    prefix: &str,
    extra: &[&str],
) -> ServerProcess {
    let mut args = vec![
        "--redis-url",
        redis_url,
        "--redis-prefix",
        prefix,
        "--cluster-sync-interval",
        "300ms",
        "--flush-interval",
        "20ms",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(database_url, &args).await
}

pub(super) async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect(
            "Redis is not reachable at 127.0.0.1:6379; start it: \
             redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
        )
}

/// Deletes every key of `prefix` (streams and leases): what a Redis
/// restart or FLUSHALL does to this cluster, without touching other tests.
pub(super) async fn delete_keys(prefix: &str) {
    let mut redis = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
    }
}

/// Stops the nodes (they would publish again) and deletes the test's keys.
pub(super) async fn finish(nodes: Vec<ServerProcess>, prefix: &str) {
    for mut node in nodes {
        let _ = node.child.kill().await;
    }
    delete_keys(prefix).await;
}

pub(super) fn state_vector(client: &YClient) -> StateVector {
    client.doc().transact().state_vector()
}

/// Inserts `token` at a random place of the client's Y.Text "t", sent to
/// its server (or only into its document while it is offline).
pub(super) async fn insert_randomly(
    client: &mut YClient,
    rng: &mut StdRng,
    token: &str,
    online: bool,
) {
    let text = client.doc().get_or_insert_text("t");
    let len = text.len(&client.doc().transact());
    let at = rng.random_range(0..=len);
    if online {
        client.edit(|txn| text.insert(txn, at, token)).await;
    } else {
        text.insert(&mut client.doc().transact_mut(), at, token);
    }
}

/// Pumps every client until all hold the same text and state vector.
pub(super) async fn converge(clients: &mut [YClient], what: &str) -> String {
    let deadline = Instant::now() + CONVERGE;
    loop {
        for client in clients.iter_mut() {
            client.pump_for(Duration::from_millis(30)).await;
        }
        let text = clients[0].text("t");
        let sv = state_vector(&clients[0]);
        if clients
            .iter()
            .all(|c| c.text("t") == text && state_vector(c) == sv)
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: clients did not converge: {:#?}",
            clients
                .iter()
                .map(|c| (c.text("t"), c.closed.clone()))
                .collect::<Vec<_>>()
        );
    }
}

/// The same characters, whatever the order: nothing lost, nothing doubled.
pub(super) fn assert_same_content(text: &str, inserted: &str) {
    let mut got: Vec<char> = text.chars().collect();
    let mut want: Vec<char> = inserted.chars().collect();
    got.sort_unstable();
    want.sort_unstable();
    assert!(
        got == want,
        "content differs:\n got {text:?}\nwant (any order) {inserted:?}"
    );
}

/// Polls each node's API until its state vector is `sv`.
pub(super) async fn assert_nodes_hold(nodes: &[&ServerProcess], room: &str, sv: &StateVector) {
    let decode = |json: &serde_json::Value| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(json["state_vector"].as_str()?)
            .ok()?;
        StateVector::decode_v1(&bytes).ok()
    };
    let deadline = Instant::now() + CONVERGE;
    for node in nodes {
        loop {
            let (status, body) = http_get(node.addr, &format!("/api/rooms/{room}")).await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if status == 200 && decode(&json).as_ref() == Some(sv) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still differs: {status} {body}",
                node.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Rounds of random concurrent inserts from every client.
pub(super) async fn edit_rounds(
    clients: &mut [YClient],
    rng: &mut StdRng,
    inserted: &mut String,
    rounds: std::ops::Range<usize>,
) {
    for round in rounds {
        for (i, client) in clients.iter_mut().enumerate() {
            let token = format!("[{i}.{round}]");
            insert_randomly(client, rng, &token, true).await;
            inserted.push_str(&token);
        }
        for client in clients.iter_mut() {
            client.pump_for(Duration::from_millis(5)).await;
        }
    }
}

/// The names of the keys of `prefix` that Redis holds now.
pub(super) async fn keys_of(prefix: &str) -> Vec<String> {
    let mut redis = redis().await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap()
}

/// Deletes `room` through the API of the node at `addr`.
pub(super) async fn delete_through(addr: std::net::SocketAddr, room: &str) {
    let deleted = ask_to_delete(addr, room).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
}

/// `DELETE /api/rooms/{room}` through the node at `addr`, whatever it
/// answers.
pub(super) async fn ask_to_delete(
    addr: std::net::SocketAddr,
    room: &str,
) -> crate::support::HttpResponse {
    http_request(
        addr,
        "DELETE",
        &format!("/api/rooms/{room}?confirm={room}"),
        &[],
        vec![],
    )
    .await
}

/// Nothing of `room` is stored: no node brought it back after the delete.
pub(super) async fn assert_rows_gone(database_url: &str, room: &str) {
    let stored = crdt_store::connect(database_url).await.unwrap();
    let name = crdt_store::RoomName::parse(room).unwrap();
    assert!(
        stored.load(&name).await.unwrap().is_empty(),
        "node B brought the deleted room back"
    );
}

/// Sets `from`'s awareness state to `{"user": user}`, sends it, and waits
/// until `to` (a client of another node) sees it. Returns `from`'s client
/// id.
pub(super) async fn announce_presence(
    from: &mut YClient,
    to: &mut YClient,
    user: &str,
) -> yrs::block::ClientID {
    from.awareness
        .set_local_state(serde_json::json!({ "user": user }))
        .unwrap();
    let update = from.awareness.update().unwrap();
    from.send(yrs::sync::Message::Awareness(update)).await;
    let id = from.awareness.client_id();
    to.until(&format!("{user}'s awareness on the other node"), |c| {
        c.awareness.state::<serde_json::Value>(id).is_some()
    })
    .await;
    id
}
