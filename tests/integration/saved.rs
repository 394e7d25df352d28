//! `?acks=1`: a y-websocket client that asks is told when its updates are
//! in the database (message type 100 with the state vector stored), never
//! sooner, and never for an update the room refused.

use std::time::{Duration, Instant};

use crdt_hub::auth::{Role, mint_hs256};
use crdt_hub::saved::MESSAGE_SAVED;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use yrs::encoding::read::{Cursor, Read};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact};

use crate::support::{
    ServerOptions, ServerProcess, TestServer, YClient, sqlite_url, stored_doc, temp_dir, text_of,
};

/// Reads frames for `within`; the state vector of the first "saved"
/// message, if one came. Other frames are left unhandled (the server's
/// sync step 1 and the echo need no answer here).
async fn saved_within(client: &mut YClient, within: Duration) -> Option<StateVector> {
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, client.ws.next()).await {
        if let Message::Binary(bytes) = frame
            && bytes.first() == Some(&MESSAGE_SAVED)
        {
            let mut cursor = Cursor::new(&bytes[1..]);
            return Some(StateVector::decode_v1(cursor.read_buf().unwrap()).unwrap());
        }
    }
    None
}

#[tokio::test]
async fn a_client_that_asks_is_told_once_its_edit_is_stored() {
    let dir = temp_dir();
    let database = sqlite_url(dir.path());
    let server = TestServer::start_with(ServerOptions::slow_flush(&database)).await;
    let mut asking = YClient::connect(&format!("{}?acks=1", server.url("saved"))).await;
    let sent = Instant::now();
    asking.insert("t", 0, "stored").await;
    let sv = saved_within(&mut asking, Duration::from_secs(10))
        .await
        .expect("a saved message");
    let waited = sent.elapsed();
    let own = asking.doc().client_id();
    assert_eq!(
        sv.get(&own),
        asking.doc().transact().state_vector().get(&own)
    );
    assert_eq!(
        text_of(&*stored_doc(&database, "saved").await, "t"),
        "stored"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "saved after {waited:?}, before a flush could have run"
    );

    // Without the parameter: nothing a stock client would not understand.
    let mut plain = YClient::connect(&server.url("saved")).await;
    plain.insert("t", 0, "plain ").await;
    assert!(
        saved_within(&mut plain, Duration::from_millis(1500))
            .await
            .is_none()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_refused_update_is_never_reported_saved() {
    const SECRET: &str = "saved-test-secret";
    let dir = temp_dir();
    let server = ServerProcess::start(&sqlite_url(dir.path()), &["--auth-secret", SECRET]).await;
    let token = mint_hs256(
        SECRET,
        vec!["ro".into()],
        Role::Read,
        Duration::from_secs(600),
    )
    .unwrap();
    let mut reader = YClient::connect(&format!("{}?acks=1&token={token}", server.url("ro"))).await;
    reader.insert("t", 0, "not mine to write").await;
    assert!(
        saved_within(&mut reader, Duration::from_millis(1500))
            .await
            .is_none()
    );
}
