//! Authentication, roles, origins, connection caps and rate limits, each
//! against the real binary: refused requests get their HTTP status before
//! any upgrade, admitted ones get what their role allows.

use std::time::Duration;

use crdt_hub::auth::{Role, mint_hs256};
use tokio_tungstenite::tungstenite;
use yrs::sync::Message as YMessage;

use crate::support::{ServerProcess, YClient, http_request, sqlite_url, temp_dir};

const SECRET: &str = "test-secret-0123456789";

fn token(rooms: &[&str], role: Role) -> String {
    crate::support::token(SECRET, rooms, role)
}

/// The HTTP status an upgrade attempt was refused with (panics if it was
/// accepted).
async fn refused_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    use tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Ok(_) => panic!("{url} was upgraded but should have been refused"),
        Err(other) => panic!("{url}: {other}"),
    }
}

async fn start(extra: &[&str]) -> (ServerProcess, tempfile::TempDir) {
    let dir = temp_dir();
    let server = ServerProcess::start(&sqlite_url(dir.path()), extra).await;
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_enters_which_room() {
    let (server, _dir) = start(&["--auth-secret", SECRET]).await;
    let url = |room: &str, token: &str| format!("{}?token={token}", server.url(room));

    assert_eq!(
        refused_status(&server.url("docs/a"), &[]).await,
        401,
        "no token"
    );
    let wrong_key = mint_hs256(
        "another-secret",
        vec!["docs/*".into()],
        Role::Write,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(
        refused_status(&url("docs/a", &wrong_key), &[]).await,
        401,
        "wrong signature"
    );
    assert_eq!(
        refused_status(&url("docs/a", "not.a.jwt"), &[]).await,
        401,
        "malformed"
    );
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = crdt_hub::auth::Claims {
            nbf: None,
            exp: 1_000_000,
            rooms: vec!["docs/*".into()],
            role: Role::Write,
            sub: None,
            jti: None,
        };
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(
        refused_status(&url("docs/a", &expired), &[]).await,
        401,
        "expired"
    );
    let docs = token(&["docs/*"], Role::Write);
    assert_eq!(
        refused_status(&url("private/x", &docs), &[]).await,
        403,
        "another room"
    );

    // Admitted by query parameter (what WebsocketProvider's params send)
    // and by Authorization header.
    let mut a = YClient::connect(&url("docs/a", &docs)).await;
    a.insert("t", 0, "in").await;
    let mut b = YClient::connect_with_headers(
        &server.url("docs/a"),
        &[("authorization", &format!("Bearer {docs}"))],
    )
    .await;
    b.until("a's edit", |c| c.text("t") == "in").await;

    // The API needs the role each route names (tests/integration/api_roles.rs
    // runs every route with every role).
    let api = |token: &str| vec![("authorization", format!("Bearer {token}"))];
    let list = |headers: Vec<(&'static str, String)>| {
        let addr = server.addr;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http_request(addr, "GET", "/api/rooms", &headers, vec![])
                .await
                .status
        }
    };
    assert_eq!(list(vec![]).await, 401);
    assert_eq!(list(api(&docs)).await, 200, "listing needs read");
    assert_eq!(list(api(&token(&["*"], Role::Admin))).await, 200);
    let room_info = http_request(
        server.addr,
        "GET",
        "/api/rooms/private%2Fx",
        &[(
            "authorization",
            &format!("Bearer {}", token(&["docs/*"], Role::Admin)),
        )],
        vec![],
    )
    .await;
    assert_eq!(room_info.status, 403, "admin of docs/* only");
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_client_syncs_but_cannot_write() {
    let (server, _dir) = start(&["--auth-secret", SECRET]).await;
    let with = |token: String| format!("{}?token={token}", server.url("shared"));
    let mut writer = YClient::connect(&with(token(&["shared"], Role::Write))).await;
    let mut reader = YClient::connect(&with(token(&["shared"], Role::Read))).await;
    writer.insert("t", 0, "written").await;
    reader
        .until("the writer's edit", |c| c.text("t") == "written")
        .await;

    // The reader's edit is neither applied nor broadcast...
    reader.insert("t", 0, "FORBIDDEN ").await;
    // ...and its connection stays open: it still gets later edits.
    writer.insert("t", 7, " more").await;
    reader
        .until("later edits", |c| c.text("t").contains("more"))
        .await;
    let mut fresh = YClient::connect(&with(token(&["shared"], Role::Read))).await;
    fresh
        .until("the document", |c| c.text("t").contains("more"))
        .await;
    assert!(
        !fresh.text("t").contains("FORBIDDEN"),
        "{}",
        fresh.text("t")
    );
    writer.pump_for(Duration::from_millis(200)).await;
    assert!(!writer.text("t").contains("FORBIDDEN"));

    // Awareness still flows from readers.
    reader
        .awareness
        .set_local_state(serde_json::json!({"user": "viewer"}))
        .unwrap();
    let update = reader.awareness.update().unwrap();
    reader.send(YMessage::Awareness(update)).await;
    let viewer = reader.awareness.client_id();
    writer
        .until("the viewer's presence", |c| {
            c.awareness.state::<serde_json::Value>(viewer).is_some()
        })
        .await;
    server.terminate().await;
}

#[tokio::test]
async fn require_auth_refuses_to_start_without_a_key_and_anonymous_mode_warns() {
    let dir = temp_dir();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_crdt-hub-under-test"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--require-auth",
            "--database-url",
            &sqlite_url(dir.path()),
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--require-auth"));

    let (server, _dir) = start(&[]).await;
    let (status, logs) = server.terminate().await;
    assert!(status.success());
    assert!(logs.contains("no authentication configured"), "{logs}");
}

#[tokio::test]
async fn the_token_command_mints_a_token_the_server_accepts() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_crdt-hub-under-test"))
        .args([
            "token", "--room", "docs/*", "--role", "write", "--ttl", "1h",
        ])
        .env("CRDT_HUB_AUTH_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "the token alone on stdout");
    let claims = crdt_hub::auth::Verifier::hs256(SECRET)
        .unwrap()
        .verify(token)
        .unwrap();
    assert_eq!(claims.role, Role::Write);
    assert!(claims.allows_room("docs/readme"));
}

#[tokio::test]
async fn browsers_from_other_origins_are_refused() {
    let (server, _dir) = start(&["--allowed-origins", "https://app.example"]).await;
    assert_eq!(
        refused_status(&server.url("r"), &[("origin", "https://evil.example")]).await,
        403
    );
    let mut ok =
        YClient::connect_with_headers(&server.url("r"), &[("origin", "https://app.example")]).await;
    ok.insert("t", 0, "fine").await;
    // Non-browser clients send no Origin and are not affected.
    let mut other = YClient::connect(&server.url("r")).await;
    other.until("the edit", |c| c.text("t") == "fine").await;
    server.terminate().await;
}

#[tokio::test]
async fn connection_caps_answer_503_before_the_upgrade() {
    let (server, _dir) =
        start(&["--max-connections", "3", "--max-connections-per-room", "2"]).await;
    let _a = YClient::connect(&server.url("one")).await;
    let mut b = YClient::connect(&server.url("one")).await;
    b.pump_for(Duration::from_millis(100)).await; // both joined
    assert_eq!(
        refused_status(&server.url("one"), &[]).await,
        503,
        "room full"
    );
    let _c = YClient::connect(&server.url("two")).await;
    assert_eq!(
        refused_status(&server.url("three"), &[]).await,
        503,
        "server full"
    );
    server.terminate().await;
}

#[tokio::test]
async fn too_many_new_connections_or_api_requests_get_429() {
    let (server, _dir) = start(&[
        "--rate-connections-per-ip",
        "1",
        "--rate-connection-burst-per-ip",
        "3",
        "--rate-api-per-ip",
        "1",
        "--rate-api-burst-per-ip",
        "3",
    ])
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(YClient::connect(&server.url("burst")).await);
    }
    assert_eq!(refused_status(&server.url("burst"), &[]).await, 429);
    for _ in 0..3 {
        assert_eq!(
            http_request(server.addr, "GET", "/api/rooms", &[], vec![])
                .await
                .status,
            200
        );
    }
    let limited = http_request(server.addr, "GET", "/api/rooms", &[], vec![]).await;
    assert_eq!(limited.status, 429);
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_past_max_doc_size_refuses_the_update() {
    let (server, _dir) = start(&["--max-doc-size", "8KiB"]).await;
    let mut writer = YClient::connect(&server.url("big")).await;
    writer.insert("t", 0, &"a".repeat(4000)).await;
    writer.insert("t", 0, &"b".repeat(6000)).await;
    assert_eq!(writer.close_code().await, Some(1009));
    // This address must now wait a second before reopening the room
    // (crdt_hub::refusals), whoever the client is.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut reader = YClient::connect(&server.url("big")).await;
    reader
        .until("the first edit", |c| c.text("t").len() == 4000)
        .await;
    reader.pump_for(Duration::from_millis(200)).await;
    assert!(!reader.text("t").contains('b'));
    server.terminate().await;
}

/// Milliseconds for an awareness query to go through the room and back.
async fn round_trip(client: &mut YClient) -> f64 {
    use futures_util::{SinkExt, StreamExt};
    let started = std::time::Instant::now();
    client
        .ws
        .send(tungstenite::Message::binary(vec![3u8]))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), client.ws.next())
            .await
            .expect("awareness answer")
            .unwrap()
            .unwrap();
        if frame.into_data().first() == Some(&1) {
            return started.elapsed().as_secs_f64() * 1000.0;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_throttled_then_closed_and_others_stay_fast() {
    let (server, _dir) = start(&[
        "--rate-messages",
        "100",
        "--rate-message-burst",
        "100",
        "--rate-max-throttled",
        "2s",
    ])
    .await;
    let mut polite = YClient::connect(&server.url("flood")).await;
    polite.pump_for(Duration::from_millis(100)).await;
    let mut baseline = Vec::new();
    for _ in 0..20 {
        baseline.push(round_trip(&mut polite).await);
    }

    let mut flooder = YClient::connect(&server.url("flood")).await;
    let flooding = tokio::spawn(async move {
        use futures_util::SinkExt;
        let chunk = "z".repeat(512);
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            let update = {
                use yrs::{Text, Transact};
                let text = flooder.doc().get_or_insert_text("t");
                let mut txn = flooder.doc().transact_mut();
                text.insert(&mut txn, 0, &chunk);
                txn.encode_update_v1()
            };
            let frame = yrs::updates::encoder::Encode::encode_v1(&YMessage::Sync(
                yrs::sync::SyncMessage::Update(update),
            ));
            if flooder
                .ws
                .send(tungstenite::Message::binary(frame))
                .await
                .is_err()
            {
                break;
            }
        }
        flooder.close_code().await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut during = Vec::new();
    for _ in 0..40 {
        during.push(round_trip(&mut polite).await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        flooding.await.unwrap(),
        Some(1008),
        "the flooder is closed for policy"
    );
    during.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    let p95 = during[during.len() * 95 / 100];
    eprintln!(
        "round trip ms: baseline median {:.2}, during flood median {:.2}, p95 {:.2}",
        baseline[10], during[20], p95
    );
    assert!(
        p95 < 100.0,
        "the polite client's round trips stay low while another floods: p95 {p95:.1} ms"
    );
    server.terminate().await;
}
