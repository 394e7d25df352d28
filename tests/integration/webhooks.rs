//! Webhooks (issue 22): signed, debounced, retried with the same delivery
//! id, delivered after a `kill -9`, sent once by two nodes sharing one
//! Postgres, and a receiver that hangs never slowing a room.

mod cli;
mod receiver;

use std::collections::HashMap;
use std::time::Duration;

use crdt_hub::webhooks::{Endpoint, EventFilter, WebhookConfig};
use receiver::{Answer, Receiver};

use crate::support::{
    Bystanders, PostgresDb, ServerOptions, ServerProcess, TestServer, YClient, sqlite_url, temp_dir,
};

const SECRET: &str = "test-webhook-secret";

fn config(receiver: &Receiver, events: &str) -> WebhookConfig {
    WebhookConfig {
        endpoint: Endpoint::parse(&receiver.url()).unwrap(),
        secret: Some(SECRET.to_string()),
        events: EventFilter::parse(events).unwrap(),
        debounce: Duration::from_millis(300),
        max_wait: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        include_json: false,
        max_age: Duration::from_secs(3600),
        concurrency: 8,
        retry_base: Duration::from_millis(200),
        retry_cap: Duration::from_secs(1),
        max_queued: 100_000,
    }
}

async fn server_with(config: WebhookConfig, database_url: Option<String>) -> TestServer {
    TestServer::start_with(ServerOptions {
        webhooks: Some(config),
        database_url,
        ..ServerOptions::default()
    })
    .await
}

#[tokio::test]
async fn events_arrive_signed_and_document_changes_debounced() {
    let receiver = Receiver::start(SECRET, Answer::Ok).await;
    let server = server_with(config(&receiver, "all"), None).await;
    let mut client = YClient::connect(&server.url("notes")).await;

    // A burst: one document.changed once the room is quiet.
    for n in 0..5 {
        client.insert("t", n, "x").await;
    }
    receiver
        .until("the burst's change", Duration::from_secs(10), |hooks| {
            hooks.iter().any(|h| h.event == "document.changed")
        })
        .await;
    // Nothing more comes for this burst.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let changes = receiver.accepted("document.changed");
    assert_eq!(changes.len(), 1, "{changes:#?}");
    // Updates the room applied: frames that arrive together may be
    // integrated as one.
    let updates = changes[0].body["updates"].as_u64().unwrap();
    assert!((1..=5).contains(&updates), "{updates}");
    assert!(
        changes[0].body["state_vector"]
            .as_str()
            .is_some_and(|sv| !sv.is_empty())
    );
    for event in ["room.loaded", "connection.opened"] {
        assert_eq!(receiver.accepted(event).len(), 1, "{event}");
    }

    // Edits every 100 ms for 2.6 s are never quiet for 300 ms: max-wait
    // (1 s) sends one about every second, plus one at the end.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2600) {
        client.insert("t", 0, "y").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last one comes a debounce after the edits stop.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let during = receiver.accepted("document.changed").len() - 1;
    assert!(
        (3..=5).contains(&during),
        "{during} changes for 2.6 s of edits"
    );

    drop(client);
    receiver
        .until("connection.closed", Duration::from_secs(10), |hooks| {
            hooks.iter().any(|h| h.event == "connection.closed")
        })
        .await;
    for hook in receiver.hooks() {
        assert!(hook.signed, "bad signature on {hook:?}");
        assert_eq!(hook.body["event"], hook.event.as_str());
        assert_eq!(hook.body["id"], hook.delivery.as_str());
        assert_eq!(hook.body["room"], "notes");
        assert!(hook.body["time"].as_str().is_some());
    }
    server.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_later_with_the_same_delivery_id() {
    let receiver = Receiver::start(SECRET, Answer::FailFirst(3)).await;
    let server = server_with(config(&receiver, "room.loaded"), None).await;
    let _client = YClient::connect(&server.url("retried")).await;
    receiver
        .until("the event, delivered", Duration::from_secs(20), |hooks| {
            hooks.iter().any(|h| h.accepted)
        })
        .await;
    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), 4, "three failures then success: {hooks:#?}");
    assert!(hooks.iter().all(|h| h.delivery == hooks[0].delivery));
    assert!(
        hooks.iter().all(|h| h.body == hooks[0].body),
        "the same body every time"
    );
    server.stop().await;
}

/// Events written while the receiver is down survive a `kill -9` of the
/// server; the restarted server delivers them all.
#[tokio::test]
async fn a_killed_server_delivers_what_was_pending_after_a_restart() {
    let dir = temp_dir();
    let database = sqlite_url(dir.path());
    // A receiver that fails every attempt. (Not a closed port: another
    // test running beside this one may be given it meanwhile.)
    let down = Receiver::start(SECRET, Answer::FailFirst(usize::MAX)).await;
    let (addr, url) = (down.addr, down.url());
    let flags = [
        "--webhook-url",
        url.as_str(),
        "--webhook-secret",
        SECRET,
        // A lease cut short by the kill expires soon after the restart.
        "--webhook-timeout",
        "1s",
        "--webhook-debounce",
        "200ms",
        "--webhook-events",
        "document.changed,room.loaded,connection.opened",
    ];
    let mut server = ServerProcess::start(&database, &flags).await;
    for room in ["a", "b", "c"] {
        let mut client = YClient::connect(&server.url(room)).await;
        client.insert("t", 0, room).await;
    }
    // 3 rooms × (loaded, opened, changed), all in the outbox.
    let store = crdt_store::connect(&database).await.unwrap();
    let written = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if store.pending_webhooks().await.unwrap() == 9 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        written.is_ok(),
        "{:#?}",
        store.webhooks(false, 100).await.unwrap()
    );
    server.child.start_kill().unwrap(); // SIGKILL
    server.child.wait().await.unwrap();

    down.stop();
    // The aborted listener is dropped at the runtime's next turn.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let receiver = Receiver::start_on(addr, SECRET, Answer::Ok).await;
    let _restarted = ServerProcess::start(&database, &flags).await;
    receiver
        .until("every event", Duration::from_secs(30), |hooks| {
            hooks.iter().filter(|h| h.accepted).count() >= 9
        })
        .await;
    let mut per_room: HashMap<String, Vec<String>> = HashMap::new();
    for hook in receiver.hooks() {
        assert!(hook.signed);
        per_room
            .entry(hook.body["room"].as_str().unwrap().to_string())
            .or_default()
            .push(hook.event);
    }
    for room in ["a", "b", "c"] {
        // In the order they happened.
        assert_eq!(
            per_room[room],
            ["room.loaded", "connection.opened", "document.changed"],
            "{room}"
        );
    }
}

/// Edits committed but still inside their debounce when the server is
/// killed: their `document.changed` is not in the outbox yet, only their
/// count, committed with them. The restarted server reports it, with the
/// stored document's state vector.
#[tokio::test]
async fn a_change_inside_its_debounce_at_a_kill_is_reported_after_a_restart() {
    let dir = temp_dir();
    let database = sqlite_url(dir.path());
    let receiver = Receiver::start(SECRET, Answer::Ok).await;
    let url = receiver.url();
    let flags = [
        "--webhook-url",
        url.as_str(),
        "--webhook-secret",
        SECRET,
        // Long enough for the kill to come first.
        "--webhook-debounce",
        "2s",
        "--webhook-max-wait",
        "10s",
        "--webhook-events",
        "document.changed",
    ];
    let mut server = ServerProcess::start(&database, &flags).await;
    let mut client = YClient::connect(&server.url("killed")).await;
    for n in 0..3 {
        client.insert("t", n, "x").await;
    }
    // Every edit stored (the journal flushes within 50 ms).
    let expected = crate::support::text_of(client.doc(), "t");
    tokio::time::timeout(Duration::from_secs(10), async {
        while crate::support::text_of(&*crate::support::stored_doc(&database, "killed").await, "t")
            != expected
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the edits are stored");
    server.child.start_kill().unwrap(); // SIGKILL
    server.child.wait().await.unwrap();
    assert!(
        receiver.hooks().is_empty(),
        "nothing was due before the kill"
    );

    let _restarted = ServerProcess::start(&database, &flags).await;
    // Counted by a node that is gone: any node reports it once it is a
    // few seconds past its debounce.
    receiver
        .until("the change", Duration::from_secs(30), |hooks| {
            hooks.iter().any(|h| h.accepted)
        })
        .await;
    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    let hook = &hooks[0];
    assert!(hook.signed);
    assert_eq!(hook.event, "document.changed");
    assert_eq!(hook.body["room"], "killed");
    let updates = hook.body["updates"].as_u64().unwrap();
    assert!((1..=3).contains(&updates), "{updates}");
    let stored = crate::support::stored_doc(&database, "killed").await;
    let state_vector = {
        use yrs::updates::encoder::Encode;
        use yrs::{ReadTxn, Transact};
        stored.transact().state_vector().encode_v1()
    };
    assert_eq!(
        hook.body["state_vector"],
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(state_vector)
        }
        .as_str()
    );
}

/// An https receiver whose certificate the server checks against the CA
/// bundle named by `SSL_CERT_FILE`; with another CA it is refused, and the
/// event waits in the outbox.
#[tokio::test]
async fn events_reach_an_https_receiver_that_the_server_trusts() {
    let pki = crate::support::make_pki();
    let dir = temp_dir();
    let database = sqlite_url(dir.path());
    let trusted = dir.path().join("trusted.pem");
    std::fs::write(&trusted, &pki.ca_pem).unwrap();
    let stranger = dir.path().join("stranger.pem");
    std::fs::write(&stranger, crate::support::make_pki().ca_pem).unwrap();
    let receiver = Receiver::start_tls(SECRET, Answer::Ok, &pki).await;
    let url = receiver.url();
    assert!(url.starts_with("https://"), "{url}");
    let flags = [
        "--webhook-url",
        url.as_str(),
        "--webhook-secret",
        SECRET,
        "--webhook-events",
        "room.loaded",
    ];

    // Not trusted: the handshake fails, nothing is received.
    let server = ServerProcess::start_with_env(
        &database,
        &flags,
        &[("SSL_CERT_FILE", stranger.to_str().unwrap())],
    )
    .await;
    YClient::connect(&server.url("untrusted")).await;
    let store = crdt_store::connect(&database).await.unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let list = store.webhooks(true, 10).await.unwrap();
            if let Some(record) = list.first() {
                return record.last_error.clone().unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the attempt fails");
    assert!(receiver.hooks().is_empty());
    assert!(
        failed.contains("certificate") || failed.contains("UnknownIssuer"),
        "{failed}"
    );
    drop(server);

    // Trusted: delivered, signed.
    let server = ServerProcess::start_with_env(
        &database,
        &flags,
        &[("SSL_CERT_FILE", trusted.to_str().unwrap())],
    )
    .await;
    YClient::connect(&server.url("trusted")).await;
    receiver
        .until(
            "the trusted room's event",
            Duration::from_secs(15),
            |hooks| hooks.iter().any(|h| h.body["room"] == "trusted"),
        )
        .await;
    let hooks = receiver.accepted("room.loaded");
    assert!(hooks.iter().all(|h| h.signed), "{hooks:#?}");
}

/// Two nodes on one Postgres both deliver from the shared outbox; each
/// event is sent once.
#[tokio::test]
async fn two_nodes_on_one_postgres_send_each_event_once() {
    let db = PostgresDb::create().await;
    let receiver = Receiver::start(SECRET, Answer::Ok).await;
    let events = "room.loaded,connection.opened,document.changed";
    let one = server_with(config(&receiver, events), Some(db.url.clone())).await;
    let two = server_with(config(&receiver, events), Some(db.url.clone())).await;
    let mut clients = Vec::new();
    for n in 0..10 {
        let server = if n % 2 == 0 { &one } else { &two };
        let mut client = YClient::connect(&server.url(&format!("room{n}"))).await;
        client.insert("t", 0, "x").await;
        clients.push(client);
    }
    receiver
        .until("30 events", Duration::from_secs(20), |hooks| {
            hooks.len() >= 30
        })
        .await;
    // Both nodes keep polling: anything sent twice would come by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hooks = receiver.hooks();
    let mut seen = HashMap::new();
    for hook in &hooks {
        *seen.entry(hook.delivery.clone()).or_insert(0) += 1;
    }
    assert_eq!(hooks.len(), 30, "{hooks:#?}");
    assert!(seen.values().all(|&n| n == 1), "sent twice: {seen:?}");
    drop(clients);
    one.stop().await;
    two.stop().await;
}

/// A receiver that never answers holds delivery slots, never a room: edits
/// still reach the other peer with p99 under 50 ms.
#[tokio::test]
async fn a_hanging_receiver_does_not_slow_the_room() {
    let receiver = Receiver::start(SECRET, Answer::Hang).await;
    let mut config = config(&receiver, "all");
    config.debounce = Duration::from_millis(20);
    config.timeout = Duration::from_secs(30);
    let server = server_with(config, None).await;
    let url = server.url("hanging");
    let mut bystanders = Bystanders::join(&url).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        stopper.cancel();
    });
    bystanders = bystanders.edit_until(stop).await;
    assert!(
        !receiver.hooks().is_empty(),
        "the receiver was sent events (and held them)"
    );
    bystanders.assert_kept_syncing();
    server.stop().await;
}

/// A graceful stop writes what the rooms report as they stop: the change
/// still inside its debounce and `room.unloaded` are in the outbox for the
/// next start to deliver.
#[tokio::test]
async fn a_graceful_stop_keeps_the_last_change_and_the_unload() {
    let dir = temp_dir();
    let database = sqlite_url(dir.path());
    let receiver = Receiver::start(SECRET, Answer::Ok).await;
    let mut config = config(&receiver, "document.changed,room.unloaded");
    config.debounce = Duration::from_secs(30);
    config.max_wait = Duration::from_secs(60);
    let server = server_with(config, Some(database.clone())).await;
    let mut client = YClient::connect(&server.url("last")).await;
    client.insert("t", 0, "x").await;
    client.until("the echo of the sync", |_| true).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop().await;

    let store = crdt_store::connect(&database).await.unwrap();
    let mut events: Vec<String> = store
        .webhooks(false, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.event)
        .collect();
    events.reverse(); // oldest first
    assert_eq!(events, ["document.changed", "room.unloaded"]);
}

/// With `--webhook-include-json`, `document.changed` carries the content
/// as `GET /api/rooms/{room}/json` renders it.
#[tokio::test]
async fn document_changed_can_carry_the_documents_json() {
    let receiver = Receiver::start(SECRET, Answer::Ok).await;
    let mut config = config(&receiver, "document.changed");
    config.include_json = true;
    let server = server_with(config, None).await;
    let mut client = YClient::connect(&server.url("rendered")).await;
    client.insert("t", 0, "hello").await;
    receiver
        .until("the change", Duration::from_secs(10), |hooks| {
            !hooks.is_empty()
        })
        .await;
    let hook = &receiver.accepted("document.changed")[0];
    let (status, rendered) =
        crate::support::http_get(server.addr, "/api/rooms/rendered/json").await;
    assert_eq!(status, 200);
    let rendered: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    assert_eq!(hook.body["json"], rendered);
    assert_eq!(hook.body["json"]["t"], "hello");
    assert!(hook.signed);
    server.stop().await;
}
