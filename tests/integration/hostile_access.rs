//! Hostile users against the real binary (issue 27): an admin of one room
//! restoring into another, listing every room, event streams that conjure
//! rooms and keep them loaded, room patterns that cross `/`, room names
//! that look like something else, tokens used before their `nbf`, varints
//! too wide for their field. Each replays the attack and checks the fix.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crdt_hub::auth::{Claims, Role};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Bystanders, ServerProcess, YClient, http_request, sqlite_url, temp_dir};

const SECRET: &str = "hostile-secret-0123456789";

fn token(rooms: &[&str], role: Role) -> String {
    crate::support::token(SECRET, rooms, role)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn start(extra: &[&str]) -> (ServerProcess, tempfile::TempDir) {
    let dir = temp_dir();
    let server = ServerProcess::start(&sqlite_url(dir.path()), extra).await;
    (server, dir)
}

/// Writes `text` into `room` through a WebSocket with `token`, and waits
/// until the server has it.
async fn write(server: &ServerProcess, room: &str, token: &str, text: &str) {
    let mut client = YClient::connect(&format!("{}?token={token}", server.url(room))).await;
    client.insert("t", 0, text).await;
    let admin = bearer(&self::token(&["**"], Role::Admin));
    for _ in 0..200 {
        let json = http_request(
            server.addr,
            "GET",
            &format!("/api/rooms/{}/json", urlencode(room)),
            &[("authorization", &admin)],
            vec![],
        )
        .await;
        if json.status == 200 && json.json()["t"].as_str().is_some_and(|t| t.contains(text)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{text:?} never reached room {room}");
}

fn urlencode(room: &str) -> String {
    percent_encoding::utf8_percent_encode(room, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_of_one_room_can_neither_restore_into_nor_list_another() {
    let (server, _dir) = start(&["--auth-secret", SECRET]).await;
    let writer = token(&["tenant-*"], Role::Write);
    write(&server, "tenant-a", &writer, "content-AAA").await;
    write(&server, "tenant-b", &writer, "content-BBB").await;
    let admin_a = bearer(&token(&["tenant-a"], Role::Admin));

    let snapshot = http_request(
        server.addr,
        "POST",
        "/api/rooms/tenant-a/snapshot",
        &[("authorization", &admin_a)],
        vec![],
    )
    .await;
    assert_eq!(snapshot.status, 201);
    let version = snapshot.json()["id"].as_i64().unwrap();

    let body = serde_json::json!({"version": version, "into": "tenant-b"}).to_string();
    let restore = http_request(
        server.addr,
        "POST",
        "/api/rooms/tenant-a/restore",
        &[
            ("authorization", &admin_a),
            ("content-type", "application/json"),
        ],
        body.into_bytes(),
    )
    .await;
    assert_eq!(restore.status, 403, "{:?}", restore.body);
    let admin_b = bearer(&token(&["tenant-b"], Role::Admin));
    let b = http_request(
        server.addr,
        "GET",
        "/api/rooms/tenant-b/json",
        &[("authorization", &admin_b)],
        vec![],
    )
    .await;
    assert_eq!(b.json()["t"], "content-BBB", "tenant-b is untouched");

    // An admin of both may restore a into b.
    let admin_both = bearer(&token(&["tenant-a", "tenant-b"], Role::Admin));
    let body = serde_json::json!({"version": version, "into": "tenant-b"}).to_string();
    let restore = http_request(
        server.addr,
        "POST",
        "/api/rooms/tenant-a/restore",
        &[
            ("authorization", &admin_both),
            ("content-type", "application/json"),
        ],
        body.into_bytes(),
    )
    .await;
    assert_eq!(restore.status, 200, "{:?}", restore.body);

    let listed = http_request(
        server.addr,
        "GET",
        "/api/rooms",
        &[("authorization", &admin_a)],
        vec![],
    )
    .await;
    assert_eq!(listed.status, 200);
    let names: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["tenant-a"], "only the rooms the token covers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_never_conjure_rooms_nor_keep_them_loaded() {
    let (server, _dir) = start(&["--room-idle-timeout", "300ms"]).await;
    // A room that exists nowhere: 404, and nothing is loaded.
    let missing = http_request(server.addr, "GET", "/api/rooms/nowhere/events", &[], vec![]).await;
    assert_eq!(missing.status, 404);

    let mut writer = YClient::connect(&server.url("watched")).await;
    writer.insert("t", 0, "hello").await;
    for _ in 0..200 {
        let json = http_request(server.addr, "GET", "/api/rooms/watched/json", &[], vec![]).await;
        if json.status == 200 && json.json()["t"] == "hello" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(writer);
    let stream =
        crate::support::http_send(server.addr, "GET", "/api/rooms/watched/events", &[], vec![])
            .await;
    assert_eq!(stream.status(), 200);
    // Held by the stream alone, the room stays; once it closes, it goes.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        rooms_loaded(&server).await,
        1,
        "a live stream keeps its room"
    );
    drop(stream);
    for _ in 0..100 {
        if rooms_loaded(&server).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the room stayed loaded after its last event stream closed");
}

async fn rooms_loaded(server: &ServerProcess) -> u64 {
    let metrics = http_request(server.addr, "GET", "/metrics", &[], vec![]).await;
    String::from_utf8_lossy(&metrics.body)
        .lines()
        .find_map(|line| line.strip_prefix("crdt_hub_rooms "))
        .map_or(0, |n| n.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_stop_at_slashes_names_cannot_hide_and_nbf_holds() {
    let (server, _dir) = start(&["--auth-secret", SECRET, "--auth-leeway", "1s"]).await;
    let upgrade = |room: &str, token: &str| {
        let url = format!("ws://{}/{}?token={token}", server.addr, urlencode(room));
        async move {
            match tokio_tungstenite::connect_async(url).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let one_level = token(&["team-a/*"], Role::Write);
    assert_eq!(upgrade("team-a/notes", &one_level).await, 101);
    assert_eq!(
        upgrade("team-a/b/notes", &one_level).await,
        403,
        "* crossed /"
    );
    let any_depth = token(&["team-a/**"], Role::Write);
    assert_eq!(upgrade("team-a/b/notes", &any_depth).await, 101);

    // Names that read as something else are refused before any auth.
    for name in ["invoice\u{202E}fdp.exe", "a\u{200B}b", "line\u{2028}break"] {
        assert_eq!(upgrade(name, &any_depth).await, 400, "{name:?}");
    }

    // A token whose nbf is in the future is refused (401) until then.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let early = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            exp: now + 600,
            nbf: Some(now + 120),
            rooms: vec!["**".into()],
            role: Role::Write,
            sub: None,
            jti: None,
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(upgrade("team-a/notes", &early).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_varint_too_wide_for_its_field_closes_the_connection() {
    let (server, _dir) = start(&[]).await;
    let mut hostile = YClient::connect(&server.url("wide")).await;
    // An update of one client whose first clock is 2^40 (yrs would read
    // 256): [sync, update, len, clients=1, structs=1, client=7, clock=2^40,
    // a one-char string item at root "t"].
    let mut update = vec![1, 1, 7, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
    update.extend_from_slice(&[4, 1, 1, b't', 1, b'x', 0]);
    let mut frame = vec![0, 2, update.len() as u8];
    frame.extend_from_slice(&update);
    hostile.ws.send(Message::binary(frame)).await.unwrap();
    assert_eq!(hostile.close_code().await, Some(1002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_never_ends_is_closed_and_fragments_count_against_the_rate() {
    use tokio::io::AsyncWriteExt;
    let (server, _dir) = start(&[]).await;
    let mut honest = YClient::connect(&server.url("calm")).await;
    let mut hostile = YClient::connect(&server.url("fragments")).await;
    // Zero-length frames of a binary message that never gets its FIN:
    // six bytes each (header and mask), nothing for the message limits.
    let mut frames = vec![0x02, 0x80, 1, 2, 3, 4];
    for _ in 0..5_000 {
        frames.extend_from_slice(&[0x00, 0x80, 1, 2, 3, 4]);
    }
    let mut bystanders = Bystanders::join(&server.url("bystanders")).await;
    let close_code = bystanders
        .keep_editing_while(async move {
            let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = hostile.ws.get_mut() else {
                unreachable!("plain TCP on loopback");
            };
            tcp.write_all(&frames).await.unwrap();
            hostile.close_code().await
        })
        .await;
    assert_eq!(close_code, Some(1008));
    bystanders.assert_kept_syncing();

    // The room next door never noticed.
    honest.insert("t", 0, "still here").await;
    let mut reader = YClient::connect(&server.url("calm")).await;
    reader
        .until("the honest edit", |c| c.text("t") == "still here")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_makes_its_sender_wait_longer_each_time() {
    let (server, _dir) = start(&["--max-doc-size", "64KiB"]).await;
    let upgrade_status = || {
        let url = server.url("big");
        async move {
            match tokio_tungstenite::connect_async(url).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                    assert!(r.headers().contains_key("retry-after"));
                    r.status().as_u16()
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let too_large = "x".repeat(100 * 1024);
    for wait in [Duration::from_secs(1), Duration::from_secs(2)] {
        let mut client = YClient::connect(&server.url("big")).await;
        client.insert("t", 0, &too_large).await;
        assert_eq!(client.close_code().await, Some(1009));
        drop(client);
        // Reconnecting at once, as y-websocket does, costs a 429 and no upload.
        assert_eq!(upgrade_status().await, 429);
        tokio::time::sleep(wait / 2).await;
        assert_eq!(upgrade_status().await, 429, "half the wait");
        tokio::time::sleep(wait / 2 + Duration::from_millis(300)).await;
        assert_eq!(upgrade_status().await, 101, "after the wait");
    }
}
