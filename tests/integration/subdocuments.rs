//! `--subdocuments`: by default an update that creates a subdocument closes
//! its WebSocket with 1003 and gets a 400 from the API, and nothing of it
//! reaches the room; with `allow` it goes through like any update.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, Text, Transact};

use crate::support::{ServerOptions, TestServer, YClient, http_request};
use crdt_hub::connection::ConnectionConfig;
use crdt_hub::subdocs::SubdocPolicy;

/// Text and a subdocument at `m.sub`, as `doc.getMap('m').set('sub', new Y.Doc())`.
fn update_with_subdocument() -> Vec<u8> {
    let doc = Doc::with_client_id(42);
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, "with a page");
    map.insert(&mut txn, "sub", Doc::new());
    let update = txn.encode_update_v1();
    drop(txn);
    crdt_hub::subdocs::release(&doc);
    update
}

async fn server(subdocuments: SubdocPolicy) -> TestServer {
    TestServer::start_with(ServerOptions {
        connection: ConnectionConfig {
            subdocuments,
            ..ConnectionConfig::default()
        },
        ..ServerOptions::default()
    })
    .await
}

#[tokio::test]
async fn by_default_updates_that_create_subdocuments_are_refused() {
    let server = server(SubdocPolicy::default()).await;
    let mut writer = YClient::connect(&server.url("pages")).await;
    let frame = YMessage::Sync(SyncMessage::Update(update_with_subdocument())).encode_v1();
    writer.ws.send(Message::binary(frame)).await.unwrap();
    assert_eq!(writer.close_code().await, Some(1003));

    let response = http_request(
        server.addr,
        "POST",
        "/api/rooms/pages/update",
        &[],
        update_with_subdocument(),
    )
    .await;
    assert_eq!(response.status, 400);
    let error = response.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("subdocument"), "{error}");

    // Nothing of either reached the room; an honest edit still does.
    let mut honest = YClient::connect(&server.url("pages")).await;
    honest.insert("t", 0, "plain").await;
    let mut reader = YClient::connect(&server.url("pages")).await;
    reader
        .until("the honest edit", |c| c.text("t") == "plain")
        .await;
    server.stop().await;
}

#[tokio::test]
async fn allowed_subdocuments_go_through() {
    let server = server(SubdocPolicy::Allow).await;
    let mut writer = YClient::connect(&server.url("pages")).await;
    writer
        .send(YMessage::Sync(SyncMessage::Update(
            update_with_subdocument(),
        )))
        .await;
    let mut reader = YClient::connect(&server.url("pages")).await;
    reader
        .until("the update", |c| c.text("t") == "with a page")
        .await;
    let has_subdoc = {
        let map = reader.doc().get_or_insert_map("m");
        map.get(&reader.doc().transact(), "sub").is_some()
    };
    assert!(has_subdoc);
    server.stop().await;
}
