//! Hostile frames end their own connection with the right close code; the
//! room and its other clients carry on.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{ServerOptions, TestServer, YClient};

/// Sends `frame` on a fresh raw socket in `room` and returns the close code.
async fn close_code_for(server: &TestServer, room: &str, frame: Message) -> Option<u16> {
    let mut hostile = YClient::connect(&server.url(room)).await;
    hostile.ws.send(frame).await.unwrap();
    hostile.close_code().await
}

/// A well-behaved pair in `room` still syncs.
async fn room_still_works(server: &TestServer, room: &str, a: &mut YClient, marker: &str) {
    a.insert("t", 0, marker).await;
    let mut fresh = YClient::connect(&server.url(room)).await;
    fresh
        .until("marker", |c| c.text("t").contains(marker))
        .await;
}

#[tokio::test]
async fn each_bad_frame_gets_its_close_code_and_the_room_carries_on() {
    let server = TestServer::start_with(ServerOptions {
        max_message_size: 64 * 1024,
        ..ServerOptions::default()
    })
    .await;
    let room = "hostile";
    let mut good = YClient::connect(&server.url(room)).await;
    good.insert("t", 0, "start ").await;

    let mut random = vec![0u8; 512];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for byte in &mut random {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *byte = seed as u8;
    }
    random[0] = 0; // a sync message, so the garbage reaches the decoder

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("truncated sync update", vec![0, 2, 10, 1, 2], 1002),
        ("sync message without subtype", vec![0], 1002),
        ("unknown sync subtype", vec![0, 7, 1, 0], 1002),
        (
            "oversized varint length",
            vec![
                0, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            ],
            1002,
        ),
        (
            "update that does not decode",
            vec![0, 2, 4, 0xFF, 0xFF, 0xFF, 0xFF],
            1002,
        ),
        ("random bytes", random, 1002),
        ("empty frame", vec![], 1002),
        ("oversize frame", vec![0; 64 * 1024 + 1], 1009),
    ];
    for (what, frame, expected) in cases {
        let code = close_code_for(&server, room, Message::binary(frame)).await;
        assert_eq!(code, Some(expected), "{what}");
        room_still_works(&server, room, &mut good, what).await;
    }
    let code = close_code_for(&server, room, Message::text("hello")).await;
    assert_eq!(code, Some(1003), "text frame");
    room_still_works(&server, room, &mut good, "after text").await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_room_names_get_400_before_upgrade() {
    let server = TestServer::start().await;
    for path in ["a%0Ab", "%FF%FE", &"x".repeat(257)] {
        let error = tokio_tungstenite::connect_async(server.url(path))
            .await
            .expect_err("upgrade must be refused");
        match error {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                assert_eq!(response.status(), 400, "{path}");
            }
            other => panic!("{path}: expected HTTP 400, got {other}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_message_types_are_ignored() {
    let server = TestServer::start().await;
    let mut a = YClient::connect(&server.url("unknown")).await;
    // type 9 with a var-length payload, then a real update in the same frame
    let mut frame = vec![9, 3, 1, 2, 3];
    let update = {
        use yrs::{Text, Transact};
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "after unknown");
        txn.encode_update_v1()
    };
    frame.extend(yrs::updates::encoder::Encode::encode_v1(
        &yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(update)),
    ));
    a.send_raw(frame).await;
    let mut b = YClient::connect(&server.url("unknown")).await;
    b.until("update after unknown type", |c| {
        c.text("t") == "after unknown"
    })
    .await;
    server.stop().await;
}
