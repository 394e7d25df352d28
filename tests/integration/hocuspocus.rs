//! The Hocuspocus protocol at `/`, spoken byte by byte: tokens per
//! document, the sync status only once the update is stored, and what a
//! hostile or broken provider gets. (The real `@hocuspocus/provider` of
//! each major is in tests/interop/hocuspocus.test.mjs.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crdt_hub::auth::{Role, mint_hs256};
use crdt_hub::connection::ConnectionConfig;
use crdt_hub_core::hocuspocus::kind;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::{Doc, Text, Transact};

use crate::api::read_events;
use crate::support::{
    ServerOptions, ServerProcess, TIMEOUT, TestServer, YClient, close_code_of, http_request,
    http_send, sqlite_url, stored_doc, temp_dir, text_of,
};

const SECRET: &str = "hocuspocus-test-secret";

/// A provider's socket, written by hand (over `wss://` too: see
/// [`Provider::over`]).
pub(crate) struct Provider<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
}

/// One message from the server: its address, type and the rest.
#[derive(Debug)]
pub(crate) struct Received {
    pub address: String,
    pub kind: u8,
    pub payload: Vec<u8>,
}

impl Received {
    /// An auth answer: (sub-type, scope or reason).
    fn auth(&self) -> (u8, String) {
        let mut cursor = Cursor::new(&self.payload);
        let sub: u8 = cursor.read_var().unwrap();
        (sub, cursor.read_string().unwrap().to_string())
    }

    pub fn sync_status(&self) -> bool {
        assert_eq!(self.kind, kind::SYNC_STATUS, "{self:?}");
        self.payload == [1]
    }
}

pub(crate) fn message(address: &str, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.write_string(address);
    out.write_var(kind);
    out.extend_from_slice(payload);
    out
}

fn token_payload(token: &str) -> Vec<u8> {
    let mut payload = vec![0];
    payload.write_string(token);
    payload
}

fn update_payload(update: &[u8]) -> Vec<u8> {
    let mut payload = vec![2]; // sync: update
    payload.write_buf(update);
    payload
}

pub(crate) fn insert(doc: &Doc, content: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, content);
    txn.encode_update_v1()
}

impl Provider {
    pub async fn connect(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .expect("upgrade at /");
        Self { ws }
    }

    /// Reads until the server closes; its close code.
    async fn close_code(&mut self, within: Duration) -> Option<u16> {
        close_code_of(&mut self.ws, within).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Provider<S> {
    pub fn over(ws: WebSocketStream<S>) -> Self {
        Self { ws }
    }

    pub async fn send(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    pub async fn auth(&mut self, address: &str, token: &str) {
        self.send(message(address, kind::AUTH, &token_payload(token)))
            .await;
    }

    pub async fn update(&mut self, address: &str, update: &[u8]) {
        self.send(message(address, kind::SYNC, &update_payload(update)))
            .await;
    }

    /// The next message addressed to `address` of type `kind`.
    pub async fn next(&mut self, address: &str, kind: u8) -> Received {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no message of type {kind} for {address}"));
            let bytes = match frame {
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            };
            let mut cursor = Cursor::new(&bytes);
            let got = Received {
                address: cursor.read_string().unwrap().to_string(),
                kind: cursor.read_var().unwrap(),
                payload: bytes[cursor.next..].to_vec(),
            };
            if got.address == address && got.kind == kind {
                return got;
            }
        }
    }
}

/// The sync status of an update is sent once the update is in the
/// database, not when the room applied it: with a one-second flush
/// interval it cannot come sooner, and when it comes the database has the
/// edit.
#[tokio::test]
async fn the_sync_status_waits_for_the_database() {
    let dir = temp_dir();
    let database = sqlite_url(dir.path());
    let server = TestServer::start_with(ServerOptions::slow_flush(&database)).await;
    let mut provider = Provider::connect(server.addr).await;
    provider.auth("durable", "").await;
    let (sub, scope) = provider.next("durable", kind::AUTH).await.auth();
    assert_eq!((sub, scope.as_str()), (2, "read-write"));
    let doc = Doc::new();
    let sent = Instant::now();
    provider.update("durable", &insert(&doc, "kept")).await;
    assert!(
        provider
            .next("durable", kind::SYNC_STATUS)
            .await
            .sync_status()
    );
    let waited = sent.elapsed();
    assert!(
        text_of(&*stored_doc(&database, "durable").await, "t") == "kept",
        "acknowledged after {waited:?} but not in the database"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "acknowledged after {waited:?}, before a flush could have run"
    );
    server.stop().await;
}

/// Each document's token is checked on its own, with the rules of
/// `?token=`: the room and the role count, and a refusal says why.
#[tokio::test]
async fn tokens_are_checked_per_document() {
    let dir = temp_dir();
    let server = ServerProcess::start(&sqlite_url(dir.path()), &["--auth-secret", SECRET]).await;
    let token = |rooms: &[&str], role| {
        mint_hs256(
            SECRET,
            rooms.iter().map(|r| r.to_string()).collect(),
            role,
            Duration::from_secs(600),
        )
        .unwrap()
    };
    let mut provider = Provider::connect(server.addr).await;
    provider.auth("mine", &token(&["mine"], Role::Write)).await;
    assert_eq!(
        provider.next("mine", kind::AUTH).await.auth(),
        (2, "read-write".into())
    );
    provider
        .auth("theirs", &token(&["mine"], Role::Write))
        .await;
    let (sub, reason) = provider.next("theirs", kind::AUTH).await.auth();
    assert_eq!(sub, 1, "permission denied");
    assert!(reason.contains("room"), "{reason}");
    provider.auth("garbage", "not-a-jwt").await;
    assert_eq!(provider.next("garbage", kind::AUTH).await.auth().0, 1);

    provider
        .auth("shared", &token(&["shared"], Role::Read))
        .await;
    assert_eq!(
        provider.next("shared", kind::AUTH).await.auth(),
        (2, "readonly".into())
    );
    // A read-only document's edit is refused, and answered as refused; an
    // update that adds nothing (a fresh provider's sync step 2) is not.
    provider
        .update("shared", &insert(&Doc::new(), "not allowed"))
        .await;
    assert!(
        !provider
            .next("shared", kind::SYNC_STATUS)
            .await
            .sync_status()
    );
    provider.update("shared", yrs::Update::EMPTY_V1).await;
    assert!(
        provider
            .next("shared", kind::SYNC_STATUS)
            .await
            .sync_status()
    );

    // The refused and the allowed documents: only "mine" got content.
    provider.update("mine", &insert(&Doc::new(), "mine")).await;
    assert!(provider.next("mine", kind::SYNC_STATUS).await.sync_status());
    provider
        .update("theirs", &insert(&Doc::new(), "sneaked"))
        .await;
    let read = |room: &str| {
        format!(
            "{}?token={}",
            server.url(room),
            token(&["mine", "theirs", "shared"], Role::Read)
        )
    };
    let mut reader = YClient::connect(&read("mine")).await;
    reader.until("mine's edit", |c| c.text("t") == "mine").await;
    for room in ["theirs", "shared"] {
        let mut reader = YClient::connect(&read(room)).await;
        reader.pump_for(Duration::from_millis(300)).await;
        assert_eq!(reader.text("t"), "", "{room} got content");
    }
}

/// Messages sent before a document's token wait for it: applied once it
/// comes, never before.
#[tokio::test]
async fn what_comes_before_the_token_waits_for_it() {
    let server = TestServer::start_with(ServerOptions {
        auth_secret: Some(SECRET),
        ..ServerOptions::default()
    })
    .await;
    let token = mint_hs256(
        SECRET,
        vec!["early".into()],
        Role::Write,
        Duration::from_secs(600),
    )
    .unwrap();
    let mut provider = Provider::connect(server.addr).await;
    provider
        .update("early", &insert(&Doc::new(), "early"))
        .await;
    let read = format!("{}?token={token}", server.url("early"));
    let mut reader = YClient::connect(&read).await;
    reader.pump_for(Duration::from_millis(300)).await;
    assert_eq!(reader.text("t"), "", "applied before the token");
    provider.auth("early", &token).await;
    provider.next("early", kind::AUTH).await;
    assert!(
        provider
            .next("early", kind::SYNC_STATUS)
            .await
            .sync_status()
    );
    reader
        .until("the held edit", |c| c.text("t") == "early")
        .await;
    server.stop().await;
}

/// Without authentication a document opens on its first message: a v2
/// provider without a token sends no auth message at all.
#[tokio::test]
async fn without_authentication_a_document_opens_on_its_first_message() {
    let server = TestServer::start().await;
    let mut provider = Provider::connect(server.addr).await;
    provider.update("open", &insert(&Doc::new(), "open")).await;
    assert!(provider.next("open", kind::SYNC_STATUS).await.sync_status());
    let mut reader = YClient::connect(&server.url("open")).await;
    reader.until("the edit", |c| c.text("t") == "open").await;
    server.stop().await;
}

/// Broken framing closes the socket (1002) before anything reaches a room;
/// so does a sync message that is not one.
#[tokio::test]
async fn malformed_messages_close_the_socket_with_1002() {
    let server = TestServer::start().await;
    let cases: [(&str, Vec<u8>); 4] = [
        ("a name longer than the message", vec![10, b'a', b'b']),
        ("a name that is not UTF-8", vec![1, 0xff, 0]),
        (
            "a broadcast-stateless from a client",
            message("room", kind::BROADCAST_STATELESS, &[1, b'x']),
        ),
        (
            "an update that does not decode",
            message("room", kind::SYNC, &[2, 3, 0xff, 0xff, 0xff]),
        ),
    ];
    for (what, bytes) in cases {
        let mut provider = Provider::connect(server.addr).await;
        provider.auth("room", "").await;
        provider.next("room", kind::AUTH).await;
        provider.send(bytes).await;
        assert_eq!(provider.close_code(TIMEOUT).await, Some(1002), "{what}");
    }
    let mut reader = YClient::connect(&server.url("room")).await;
    reader.pump_for(Duration::from_millis(200)).await;
    assert_eq!(reader.text("t"), "");
    server.stop().await;
}

/// What a socket may hold for documents without a token is bounded: past
/// it the socket closes (1008); a document whose token never comes closes
/// it after 10 s (4401); past --max-documents-per-connection a provider is
/// told so.
#[tokio::test]
async fn held_messages_and_documents_are_bounded() {
    let server = TestServer::start_with(ServerOptions {
        connection: ConnectionConfig {
            max_documents: 2,
            ..ConnectionConfig::default()
        },
        auth_secret: Some(SECRET),
        ..ServerOptions::unthrottled()
    })
    .await;
    let token = mint_hs256(
        SECRET,
        vec!["*".into()],
        Role::Write,
        Duration::from_secs(600),
    )
    .unwrap();
    let mut flood = Provider::connect(server.addr).await;
    for _ in 0..300 {
        flood
            .send(message("no-token", kind::QUERY_AWARENESS, &[]))
            .await;
    }
    assert_eq!(flood.close_code(TIMEOUT).await, Some(1008));

    let mut patient = Provider::connect(server.addr).await;
    patient
        .send(message("no-token", kind::QUERY_AWARENESS, &[]))
        .await;
    let started = Instant::now();
    assert_eq!(
        patient.close_code(Duration::from_secs(15)).await,
        Some(4401)
    );
    assert!(started.elapsed() >= Duration::from_secs(9));

    let mut many = Provider::connect(server.addr).await;
    for document in ["one", "two", "three"] {
        many.auth(document, &token).await;
    }
    assert_eq!(many.next("one", kind::AUTH).await.auth().0, 2);
    assert_eq!(many.next("two", kind::AUTH).await.auth().0, 2);
    let (sub, reason) = many.next("three", kind::AUTH).await.auth();
    assert_eq!(sub, 1);
    assert!(
        reason.contains("--max-documents-per-connection"),
        "{reason}"
    );
    // Detaching one makes room for another.
    many.send(message("one", kind::CLOSE, &[])).await;
    many.auth("three", &token).await;
    assert_eq!(many.next("three", kind::AUTH).await.auth().0, 2);
    server.stop().await;
}

/// Stateless messages: a provider's reaches the room's event feed (not the
/// other providers, as with Hocuspocus); one posted to the API reaches
/// every provider in the room, and nobody in another room.
#[tokio::test]
async fn stateless_messages_go_to_the_feed_and_from_the_api() {
    let server = TestServer::start().await;
    let mut alice = Provider::connect(server.addr).await;
    let mut bob = Provider::connect(server.addr).await;
    alice.auth("chat", "").await;
    alice.next("chat", kind::AUTH).await;
    for room in ["chat", "elsewhere"] {
        bob.auth(room, "").await;
        bob.next(room, kind::AUTH).await;
    }
    let feed = http_send(server.addr, "GET", "/api/rooms/chat/events", &[], vec![]).await;
    let mut body = feed.into_body();
    let mut buffer = String::new();
    assert_eq!(read_events(&mut body, &mut buffer, 1).await[0].0, "ready");

    let mut said = vec![kind::STATELESS];
    said.write_string("typing: alice");
    alice
        .send(message("chat", kind::STATELESS, &said[1..]))
        .await;
    let events = read_events(&mut body, &mut buffer, 1).await;
    assert_eq!(
        (events[0].0.as_str(), events[0].2.as_str()),
        ("stateless", "typing: alice")
    );

    let response = http_request(
        server.addr,
        "POST",
        "/api/rooms/chat/stateless",
        &[("content-type", "text/plain")],
        b"saved by the backend".to_vec(),
    )
    .await;
    assert_eq!(response.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer["delivered"], 2);
    for provider in [&mut alice, &mut bob] {
        let got = provider.next("chat", kind::STATELESS).await;
        let mut cursor = Cursor::new(&got.payload);
        assert_eq!(cursor.read_string().unwrap(), "saved by the backend");
    }
    let bad = http_request(
        server.addr,
        "POST",
        "/api/rooms/chat/stateless",
        &[],
        vec![0xff, 0xfe],
    )
    .await;
    assert_eq!(bad.status, 400);
    server.stop().await;
}

/// A provider that sends its token and an edit and resets the connection
/// at once (a tab closed right after typing) has its edit kept, as a
/// y-websocket client's is: the server may find it gone when it answers
/// the token, before it has read the edit.
#[tokio::test]
async fn an_edit_sent_just_before_a_connection_reset_is_kept() {
    use tokio_tungstenite::MaybeTlsStream;

    let server = TestServer::start().await;
    let rooms: Vec<String> = (0..20).map(|i| format!("hp-reset-{i}")).collect();
    for room in &rooms {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let url = format!("ws://{}/", server.addr);
        let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
        let mut token = vec![0];
        token.write_string("");
        ws.feed(Message::binary(message(room, kind::AUTH, &token)))
            .await
            .unwrap();
        let update = insert(&Doc::new(), room);
        ws.feed(Message::binary(message(
            room,
            kind::SYNC,
            &update_payload(&update),
        )))
        .await
        .unwrap();
        ws.flush().await.unwrap();
        let MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
            unreachable!("plain TCP on loopback");
        };
        tcp.set_zero_linger().unwrap();
        drop(ws);
    }
    for room in &rooms {
        let mut reader = YClient::connect(&server.url(room)).await;
        reader
            .until(&format!("the edit sent to {room}"), |c| {
                c.text("t") == *room
            })
            .await;
    }
    server.stop().await;
}
