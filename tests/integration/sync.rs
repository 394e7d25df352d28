use yrs::sync::{Message, SyncMessage};
use yrs::{Map, ReadTxn, Transact};

use crate::support::{ServerOptions, TestServer, YClient};

#[tokio::test]
async fn two_clients_sync_both_ways() {
    let server = TestServer::start().await;
    let mut a = YClient::connect(&server.url("doc")).await;
    let mut b = YClient::connect(&server.url("doc")).await;

    a.insert("t", 0, "hello").await;
    b.until("a's text", |c| c.text("t") == "hello").await;

    let map = b.doc().get_or_insert_map("m");
    b.edit(|txn| {
        map.insert(txn, "k", 42);
    })
    .await;
    let map_a = a.doc().get_or_insert_map("m");
    a.until("b's map entry", |c| {
        map_a.get(&c.doc().transact(), "k").is_some()
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn first_frame_is_sync_step1_and_step1_is_answered() {
    use futures_util::StreamExt;
    use yrs::updates::decoder::Decode;

    let server = TestServer::start().await;
    let mut writer = YClient::connect(&server.url("greeting")).await;
    writer.insert("t", 0, "abc").await;

    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("greeting"))
        .await
        .unwrap();
    let first = ws.next().await.unwrap().unwrap().into_data();
    let message = Message::decode_v1(&first).unwrap();
    assert!(
        matches!(message, Message::Sync(SyncMessage::SyncStep1(_))),
        "{message:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_thousands_of_keystrokes_all_arrive() {
    // A client replaying offline edits: thousands of frames back to back,
    // read in bursts and queued as many room commands. None may be lost
    // between turns of the room (see `Turn` in room/owner.rs, whose unit
    // tests pin the exact boundary).
    let server = TestServer::start_with(ServerOptions::unthrottled()).await;
    let url = server.url("burst");
    let mut writer = YClient::connect(&url).await;
    let mut observer = YClient::connect(&url).await;
    for i in 0..3000 {
        writer.insert("t", i, "x").await;
    }
    observer
        .until("every keystroke", |c| c.text("t").len() == 3000)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn late_joiner_gets_everything() {
    let server = TestServer::start().await;
    let mut a = YClient::connect(&server.url("late")).await;
    for i in 0..50 {
        a.insert("t", 0, &format!("{i},")).await;
    }
    let expected = a.text("t");
    let mut late = YClient::connect(&server.url("late")).await;
    late.until("full state", |c| c.text("t") == expected).await;
    assert_eq!(
        late.doc().transact().state_vector(),
        a.doc().transact().state_vector()
    );
    server.stop().await;
}

#[tokio::test]
async fn updates_stay_in_their_room() {
    let server = TestServer::start().await;
    let mut a = YClient::connect(&server.url("room-a")).await;
    let mut b = YClient::connect(&server.url("room-a")).await;
    let mut other = YClient::connect(&server.url("Room-A")).await;
    a.insert("t", 0, "only for room-a").await;
    b.until("update in room-a", |c| c.text("t") == "only for room-a")
        .await;
    other.pump_for(std::time::Duration::from_millis(300)).await;
    assert_eq!(other.text("t"), "");
    server.stop().await;
}

#[tokio::test]
async fn awareness_is_shared_and_removed_when_its_owner_leaves() {
    let server = TestServer::start().await;
    let mut a = YClient::connect(&server.url("aw")).await;
    let mut b = YClient::connect(&server.url("aw")).await;
    a.awareness
        .set_local_state(serde_json::json!({"user": "alice"}))
        .unwrap();
    let update = a.awareness.update().unwrap();
    a.send(Message::Awareness(update)).await;
    let alice = a.awareness.client_id();
    b.until("alice's awareness", |c| {
        c.awareness.state::<serde_json::Value>(alice).is_some()
    })
    .await;

    drop(a); // abrupt: the socket just goes away
    b.until("alice's removal", |c| {
        c.awareness.state::<serde_json::Value>(alice).is_none()
    })
    .await;
    server.stop().await;
}

/// y-websocket sends back every awareness change it applies, so after a
/// client leaves, echoes of its last state still come in. They must not
/// bring it back: not as a ghost shown to later joiners, nor by replacing
/// its removal while the room holds that for its next awareness message
/// (found by the Hocuspocus interop test, on a loaded machine).
#[tokio::test]
async fn an_echo_of_a_departed_clients_presence_does_not_bring_it_back() {
    let server = TestServer::start_with(ServerOptions {
        room: crdt_hub::room::RoomConfig {
            // Long enough for the leave and the echo to land in one window.
            awareness_window: std::time::Duration::from_secs(1),
            ..crdt_hub::room::RoomConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let url = server.url("echo");
    let mut a = YClient::connect(&url).await;
    let mut b = YClient::connect(&url).await;
    let alice = a.awareness.client_id();
    let bob = b.awareness.client_id();
    a.announce(serde_json::json!({"user": "alice"})).await;
    b.until("alice's presence", |c| {
        c.awareness.state::<serde_json::Value>(alice).is_some()
    })
    .await;

    // Bob moves (a window starts), Alice leaves (her removal is held),
    // then Bob's client echoes her last state, as y-websocket does.
    b.announce(serde_json::json!({"user": "bob"})).await;
    drop(a);
    let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
    loop {
        let info = crate::support::http_request(server.addr, "GET", "/api/rooms/echo", &[], vec![])
            .await
            .json();
        if info["connections"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never left: {info}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let echo = b.awareness.update_with_clients([alice]).unwrap();
    b.send(Message::Awareness(echo)).await;

    b.until("alice's removal", |c| {
        c.awareness.state::<serde_json::Value>(alice).is_none()
    })
    .await;
    let mut c = YClient::connect(&url).await;
    c.until("bob's presence", |c| {
        c.awareness.state::<serde_json::Value>(bob).is_some()
    })
    .await;
    c.pump_for(std::time::Duration::from_millis(200)).await;
    assert!(
        c.awareness.state::<serde_json::Value>(alice).is_none(),
        "a joiner is shown the departed client"
    );
    server.stop().await;
}

#[tokio::test]
async fn offline_edits_merge_on_reconnect() {
    let server = TestServer::start().await;
    let mut a = YClient::connect(&server.url("offline")).await;
    a.insert("t", 0, "base ").await;
    let mut b = YClient::connect(&server.url("offline")).await;
    b.until("base", |c| c.text("t") == "base ").await;

    // b goes offline and edits; a edits meanwhile.
    let b_doc = b.doc().clone();
    drop(b);
    {
        use yrs::Text;
        let text = b_doc.get_or_insert_text("t");
        let mut txn = b_doc.transact_mut();
        text.push(&mut txn, "offline-b");
    }
    a.insert("t", 0, "online-a ").await;

    // Reconnecting with the same doc: the server's SyncStep1 makes the
    // client send what it has; the client's SyncStep1 fetches the rest.
    let mut b = YClient::connect_with_doc(&server.url("offline"), b_doc).await;
    b.until("a's edit", |c| c.text("t").contains("online-a"))
        .await;
    a.until("b's offline edit", |c| c.text("t").contains("offline-b"))
        .await;
    assert_eq!(a.text("t"), b.text("t"));
    server.stop().await;
}
