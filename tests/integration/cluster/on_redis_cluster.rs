//! The important cluster cases again on a real Redis Cluster of three
//! masters (`--redis-cluster`), which each test starts for itself: a
//! room's keys live on its slot's master, other rooms' on other masters,
//! and the revocation announcements go through cluster-wide pub/sub.

use std::collections::HashMap;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use yrs::Text;

use super::common::{
    Bus, CONVERGE, assert_nodes_hold, assert_same_content, converge, edit_rounds, start_node,
    state_vector, unique_prefix,
};
use super::redis_cluster::RedisCluster;
use crate::support::{PostgresDb, YClient};

#[tokio::test]
async fn three_nodes_converge_under_concurrent_edits_on_redis_cluster() {
    super::concurrent_edits_converge(&Bus::cluster().await).await;
}

#[tokio::test]
async fn awareness_crosses_nodes_on_redis_cluster() {
    super::awareness_crosses_nodes(&Bus::cluster().await).await;
}

#[tokio::test]
async fn a_room_deleted_through_one_node_is_closed_on_the_others_on_redis_cluster() {
    super::deleted_everywhere(&Bus::cluster().await).await;
}

#[tokio::test]
async fn a_revocation_reaches_every_node_on_redis_cluster() {
    super::revocation_reaches_every_node(&Bus::cluster().await).await;
}

/// Stateless messages posted to a node that holds the room and to one
/// that does not, and updates both ways.
#[tokio::test]
async fn a_hocuspocus_provider_and_a_y_websocket_client_share_a_room_on_redis_cluster() {
    super::hocuspocus_and_y_websocket_share(&Bus::cluster().await).await;
}

/// One room per master: each room's keys are on its slot's master and
/// nowhere else, every room syncs, and every key goes once the rooms
/// unload.
#[tokio::test]
async fn rooms_on_every_master_share_and_leave_no_key_on_redis_cluster() {
    let bus = Bus::cluster().await;
    let Bus::Cluster(cluster) = &bus else {
        unreachable!()
    };
    let db = PostgresDb::create().await;
    let prefix = unique_prefix("spread");
    let flags = ["--room-idle-timeout", "300ms"];
    let a = bus.start_node(&db, &prefix, &flags).await;
    let b = bus.start_node(&db, &prefix, &flags).await;

    let rooms = one_room_per_master(cluster, &prefix).await;
    let mut clients = Vec::new();
    for room in rooms.values() {
        let mut on_a = YClient::connect(&a.url(room)).await;
        let mut on_b = YClient::connect(&b.url(room)).await;
        on_a.insert("t", 0, room).await;
        on_b.until("a's edit on node B", |c| c.text("t") == *room)
            .await;
        on_b.insert("t", 0, "b:").await;
        on_a.until("b's edit on node A", |c| c.text("t") == format!("b:{room}"))
            .await;
        clients.push((on_a, on_b));
    }
    for (master, room) in &rooms {
        let tag = format!("{{={room}}}");
        for port in &cluster.ports {
            let keys: Vec<String> = cluster
                .keys_on(*port, &prefix)
                .await
                .into_iter()
                .filter(|k| k.ends_with(&tag))
                .collect();
            if port == master {
                for kind in ["room", "interest"] {
                    let key = format!("{prefix}:{kind}:{tag}");
                    assert!(keys.contains(&key), "{key} on :{port}: {keys:?}");
                }
            } else {
                assert!(keys.is_empty(), "{room}'s keys on :{port} too: {keys:?}");
            }
        }
    }

    drop(clients);
    let deadline = Instant::now()
        + Duration::from_millis(300)
        + super::UNLOAD_SLACK
        + Duration::from_millis(300) * 6;
    loop {
        let keys = cluster.keys(&prefix).await;
        if keys.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys outlived their rooms: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.finish(vec![a, b], &prefix).await;
}

/// A room name for each master, by the port of the master that serves
/// the room's keys.
async fn one_room_per_master(cluster: &RedisCluster, prefix: &str) -> HashMap<u16, String> {
    let mut rooms = HashMap::new();
    for i in 0.. {
        let room = format!("room-{i}");
        let master = cluster
            .master_of(&format!("{prefix}:room:{{={room}}}"))
            .await;
        rooms.entry(master).or_insert(room);
        if rooms.len() == cluster.ports.len() {
            return rooms;
        }
    }
    unreachable!()
}

/// Node B loses its stream commands (an ACL of its own user, on every
/// master): what it publishes is dropped and it reads nothing, while its
/// claims go on; then the streams vanish. Anti-entropy brings the nodes
/// together once B may use streams again, including a pure deletion made
/// on B meanwhile.
#[tokio::test]
async fn nodes_that_missed_bus_messages_converge_on_redis_cluster() {
    let bus = Bus::cluster().await;
    let Bus::Cluster(cluster) = &bus else {
        unreachable!()
    };
    let acl = |rules: &[&str]| {
        let mut command = redis::cmd("ACL");
        command.arg("SETUSER").arg("node-b").arg(rules);
        command
    };
    cluster
        .on_every_master(&acl(&["on", ">secret", "~*", "&*", "+@all"]))
        .await;
    let db = PostgresDb::create().await;
    let prefix = unique_prefix("entropy-cluster");
    let a = bus.start_node(&db, &prefix, &[]).await;
    let flags = cluster.node_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let b = start_node(&db.url, &cluster.url_as("node-b:secret@"), &prefix, &flags).await;
    let room = "entropy";
    let mut clients = vec![
        YClient::connect(&a.url(room)).await,
        YClient::connect(&b.url(room)).await,
    ];
    let mut inserted = String::from("start ");
    clients[0].insert("t", 0, "start ").await;
    clients[1]
        .until("the first edit on node B", |c| c.text("t") == "start ")
        .await;

    cluster.on_every_master(&acl(&["-xadd", "-xread"])).await;
    // B's client deletes "start ": a pure deletion (no Yjs clock moves),
    // which only the delete-set digest can show A.
    let text = clients[1].doc().get_or_insert_text("t");
    clients[1]
        .edit(|txn| text.remove_range(txn, 0, "start ".len() as u32))
        .await;
    inserted = inserted.replacen("start ", "", 1);
    let deadline = Instant::now() + CONVERGE;
    let failures = || {
        b.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("publishing to Redis failed"))
            .count()
    };
    while failures() < 2 {
        assert!(
            Instant::now() < deadline,
            "node B kept publishing without XADD:\n{}",
            b.stderr.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rng = StdRng::seed_from_u64(11);
    edit_rounds(&mut clients[..1], &mut rng, &mut inserted, 0..8).await;
    cluster.delete_keys(&prefix).await;
    edit_rounds(&mut clients[..1], &mut rng, &mut inserted, 8..12).await;
    cluster.on_every_master(&acl(&["+xadd", "+xread"])).await;

    let text = converge(&mut clients, "after B got its streams back").await;
    assert_same_content(&text, &inserted);
    edit_rounds(&mut clients, &mut rng, &mut inserted, 12..16).await;
    let text = converge(&mut clients, "live again").await;
    assert_same_content(&text, &inserted);
    let sv = state_vector(&clients[0]);
    assert_nodes_hold(&[&a, &b], room, &sv).await;
    bus.finish(vec![a, b], &prefix).await;
}

/// `rediss://` seeds and `--redis-ca-file`: every node of the cluster,
/// the ones the client discovers too, is reached over TLS.
#[tokio::test]
async fn nodes_share_rooms_through_a_tls_redis_cluster() {
    let bus = Bus::Cluster(RedisCluster::start_tls().await);
    let Bus::Cluster(cluster) = &bus else {
        unreachable!()
    };
    let (_db, prefix, node_a, node_b) = bus.two_nodes("tls-cluster").await;
    // One of them on the master that is not a seed.
    for room in one_room_per_master(cluster, &prefix).await.values() {
        let mut a = YClient::connect(&node_a.url(room)).await;
        let mut b = YClient::connect(&node_b.url(room)).await;
        a.insert("t", 0, "a").await;
        b.until("a's edit through the TLS cluster", |c| c.text("t") == "a")
            .await;
        b.insert("t", 1, "b").await;
        a.until("b's edit through the TLS cluster", |c| c.text("t") == "ab")
            .await;
    }
    bus.finish(vec![node_a, node_b], &prefix).await;
}

/// Nodes started before their Redis Cluster serve their clients alone
/// meanwhile, and share the room once the cluster is up.
#[tokio::test]
async fn nodes_started_before_their_redis_cluster_share_rooms_once_it_is_up() {
    let reserved = RedisCluster::reserve();
    let url = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        reserved[0], reserved[1]
    );
    let db = PostgresDb::create().await;
    let prefix = unique_prefix("late-cluster");
    let a = start_node(&db.url, &url, &prefix, &["--redis-cluster"]).await;
    let b = start_node(&db.url, &url, &prefix, &["--redis-cluster"]).await;
    let room = "early";
    let mut on_a = YClient::connect(&a.url(room)).await;
    let mut on_b = YClient::connect(&b.url(room)).await;
    on_a.insert("t", 0, "a").await;
    on_b.insert("t", 0, "b").await;
    on_a.until("its own edit", |c| c.text("t") == "a").await;

    let cluster = Bus::Cluster(RedisCluster::start_on(reserved).await);
    let mut clients = [on_a, on_b];
    let text = converge(&mut clients, "once the cluster is up").await;
    assert_same_content(&text, "ab");
    cluster.finish(vec![a, b], &prefix).await;
}
