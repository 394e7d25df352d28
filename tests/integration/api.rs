//! The HTTP API against the real server with real storage: every endpoint,
//! its errors, and the OpenAPI description matching what is served.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::BodyExt;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Transact, Update};

use crate::support::{TestServer, YClient, http_request, http_send, text_of, update_inserting};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_can_be_listed_read_written_snapshotted_and_deleted() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let mut alice = YClient::connect(&server.url("team%2Fnotes")).await;
    alice.insert("t", 0, "hello").await;
    let mut check = YClient::connect(&server.url("team%2Fnotes")).await;
    check.until("hello", |c| c.text("t") == "hello").await;
    drop(check);

    // List: the room with its live connection.
    let list = http_request(addr, "GET", "/api/rooms", &[], vec![]).await;
    assert_eq!(list.status, 200);
    let rooms = list.json();
    let entry = rooms
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "team/notes")
        .unwrap_or_else(|| panic!("room missing from {rooms}"));
    assert_eq!(entry["loaded"], true);
    assert!(entry["connections"].as_u64().unwrap() >= 1);

    // Info.
    let info = http_request(addr, "GET", "/api/rooms/team%2Fnotes", &[], vec![]).await;
    assert_eq!(info.status, 200, "{:?}", info.body);
    let info = info.json();
    assert_eq!(info["room"], "team/notes");
    assert!(info["document_bytes"].as_u64().unwrap() > 0);
    let sv = BASE64
        .decode(info["state_vector"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        yrs::StateVector::decode_v1(&sv).unwrap(),
        alice.doc().transact().state_vector()
    );
    assert!(info["last_change"].is_string());

    // State: the whole document, then only what a state vector lacks.
    let state = http_request(addr, "GET", "/api/rooms/team%2Fnotes/state", &[], vec![]).await;
    assert_eq!(state.status, 200);
    assert_eq!(state.headers["content-type"], "application/octet-stream");
    let replica = Doc::new();
    replica
        .transact_mut()
        .apply_update(Update::decode_v1(&state.body).unwrap())
        .unwrap();
    assert_eq!(text_of(&replica, "t"), "hello");
    let sv_param = BASE64.encode(replica.transact().state_vector().encode_v1());
    let path = format!(
        "/api/rooms/team%2Fnotes/state?sv={}",
        percent_encoding::utf8_percent_encode(&sv_param, percent_encoding::NON_ALPHANUMERIC)
    );
    let diff = http_request(addr, "GET", &path, &[], vec![]).await;
    assert_eq!(diff.status, 200);
    assert!(
        diff.body.len() < state.body.len(),
        "a state vector narrows the state"
    );
    let bad_sv = http_request(
        addr,
        "GET",
        "/api/rooms/team%2Fnotes/state?sv=%%%",
        &[],
        vec![],
    )
    .await;
    assert_eq!(bad_sv.status, 400);

    // Update from a backend: the connected client receives it at once.
    let posted = http_request(
        addr,
        "POST",
        "/api/rooms/team%2Fnotes/update",
        &[("content-type", "application/octet-stream")],
        update_inserting("from the API; "),
    )
    .await;
    assert_eq!(posted.status, 200, "{:?}", posted.body);
    alice
        .until("the API's update", |c| {
            c.text("t").contains("from the API; ")
        })
        .await;
    let garbage = http_request(
        addr,
        "POST",
        "/api/rooms/team%2Fnotes/update",
        &[],
        vec![0xFF, 1, 2],
    )
    .await;
    assert_eq!(garbage.status, 400);
    assert!(garbage.json()["error"].is_string());

    // JSON.
    let json = http_request(addr, "GET", "/api/rooms/team%2Fnotes/json", &[], vec![]).await;
    assert_eq!(json.status, 200);
    assert_eq!(json.json()["t"], alice.text("t"));

    // Snapshot, then the versions list.
    let snapshot = http_request(
        addr,
        "POST",
        "/api/rooms/team%2Fnotes/snapshot",
        &[],
        vec![],
    )
    .await;
    assert_eq!(snapshot.status, 201, "{:?}", snapshot.body);
    let id = snapshot.json()["id"].as_i64().unwrap();
    let versions = http_request(
        addr,
        "GET",
        "/api/rooms/team%2Fnotes/snapshots",
        &[],
        vec![],
    )
    .await;
    assert_eq!(versions.json()[0]["id"].as_i64(), Some(id));

    // Delete: refused without confirmation; then the client is closed and
    // nothing is left.
    let refused = http_request(addr, "DELETE", "/api/rooms/team%2Fnotes", &[], vec![]).await;
    assert_eq!(refused.status, 400);
    let deleted = http_request(
        addr,
        "DELETE",
        "/api/rooms/team%2Fnotes?confirm=team%2Fnotes",
        &[],
        vec![],
    )
    .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(alice.close_code().await, Some(1000));
    let gone = http_request(addr, "GET", "/api/rooms/team%2Fnotes", &[], vec![]).await;
    assert_eq!(gone.status, 404);
    let room = crdt_store::RoomName::parse("team/notes").unwrap();
    assert!(server.app.store.load(&room).await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let server = TestServer::start().await;
    let missing = http_request(server.addr, "GET", "/api/rooms/nope", &[], vec![]).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("nope"));
    let bad_name = http_request(server.addr, "GET", "/api/rooms/%FF/json", &[], vec![]).await;
    assert_eq!(bad_name.status, 400);
    assert!(bad_name.json()["error"].is_string());
    let no_route = http_request(server.addr, "GET", "/api/nothing-here", &[], vec![]).await;
    assert_eq!(no_route.status, 404);
    assert!(no_route.json()["error"].is_string());
    server.stop().await;
}

/// Reads SSE events (`event` name, `id`, `data`) until `count` arrived.
pub(crate) async fn read_events(
    body: &mut hyper::body::Incoming,
    buffer: &mut String,
    count: usize,
) -> Vec<(String, String, String)> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
    while events.len() < count {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            if !field("event").is_empty() {
                events.push((field("event"), field("id"), field("data")));
            }
        }
        if events.len() >= count {
            break;
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("SSE event in time")
            .expect("stream open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
    }
    events
}

/// Reconnects to the feed of room `feed` with `Last-Event-ID: last_id` and
/// returns its first `count` events.
async fn events_after(
    addr: std::net::SocketAddr,
    last_id: &str,
    count: usize,
) -> Vec<(String, String, String)> {
    let response = http_send(
        addr,
        "GET",
        "/api/rooms/feed/events",
        &[("last-event-id", last_id)],
        vec![],
    )
    .await;
    let mut body = response.into_body();
    let mut buffer = String::new();
    read_events(&mut body, &mut buffer, count).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_updates_made_over_websocket() {
    let server = TestServer::start().await;
    let mut writer = YClient::connect(&server.url("feed")).await;
    writer.insert("t", 0, "first").await;
    let mut check = YClient::connect(&server.url("feed")).await;
    check.until("first", |c| c.text("t") == "first").await;

    let response = http_send(server.addr, "GET", "/api/rooms/feed/events", &[], vec![]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut buffer = String::new();
    let ready = read_events(&mut body, &mut buffer, 1).await;
    assert_eq!(ready[0].0, "ready");
    let ready_id = ready[0].1.clone();

    writer.insert("t", 0, "second ").await;
    let events = read_events(&mut body, &mut buffer, 1).await;
    assert_eq!(events[0].0, "update");
    let update = BASE64.decode(&events[0].2).unwrap();
    let replica = Doc::new();
    let state = http_request(server.addr, "GET", "/api/rooms/feed/state", &[], vec![]).await;
    replica
        .transact_mut()
        .apply_update(Update::decode_v1(&state.body).unwrap())
        .unwrap();
    replica
        .transact_mut()
        .apply_update(Update::decode_v1(&update).unwrap())
        .unwrap();
    assert_eq!(text_of(&replica, "t"), "second first");
    let last_id = events[0].1.clone();
    assert_ne!(last_id, ready_id);
    drop(body);

    // Reconnecting with the last id seen: nothing missed, no refetch.
    let again = events_after(server.addr, &last_id, 1).await;
    assert_eq!(
        (again[0].0.as_str(), again[0].1.as_str()),
        ("ready", last_id.as_str())
    );

    // With an older id: told to refetch.
    writer.insert("t", 0, "missed ").await;
    check
        .until("missed", |c| c.text("t").starts_with("missed"))
        .await;
    let events = events_after(server.addr, &last_id, 2).await;
    assert_eq!(events[1].0, "refetch");
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop().await;
}

/// What `openapi.yaml` says of one operation.
#[derive(Debug, Default)]
struct SpecOperation {
    /// `x-crdt-hub-role`, if any.
    role: Option<String>,
    /// `security: []`: public.
    public: bool,
    responses: Vec<String>,
}

/// Each operation `openapi.yaml` declares, by (method, path).
fn spec_operations() -> Vec<((String, String), SpecOperation)> {
    let spec = crdt_hub::http::api::OPENAPI_YAML;
    let mut operations: Vec<((String, String), SpecOperation)> = Vec::new();
    let mut in_paths = false;
    let mut path = None;
    for line in spec.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if in_paths && !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !p.starts_with(' ')
        {
            path = Some(p.to_string());
        } else if let Some(method) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            && ["get", "post", "put", "delete", "patch"].contains(&method)
        {
            operations.push((
                (method.to_string(), path.clone().unwrap()),
                SpecOperation::default(),
            ));
        } else if let Some((_, operation)) = operations.last_mut() {
            if let Some(role) = line.strip_prefix("      x-crdt-hub-role: ") {
                operation.role = Some(role.to_string());
            } else if line == "      security: []" {
                operation.public = true;
            } else if let Some(code) = line
                .strip_prefix("        \"")
                .and_then(|l| l.strip_suffix("\":"))
            {
                operation.responses.push(code.to_string());
            }
        }
    }
    operations
}

#[test]
fn the_spec_declares_each_routes_role_and_its_refusals() {
    let operations = spec_operations();
    for route in crdt_hub::http::api::ROUTES {
        let (_, operation) = operations
            .iter()
            .find(|((m, p), _)| m == route.method && p == route.path)
            .unwrap_or_else(|| panic!("{} {} is not in openapi.yaml", route.method, route.path));
        match route.role {
            Some(role) => {
                assert_eq!(
                    operation.role.as_deref(),
                    Some(role.name()),
                    "{}",
                    route.path
                );
                for code in ["401", "403", "429"] {
                    assert!(
                        operation.responses.iter().any(|c| c == code),
                        "{} {} does not declare {code}",
                        route.method,
                        route.path
                    );
                }
            }
            None => assert!(operation.public, "{} is public", route.path),
        }
    }
}

/// The (method, path) pairs `openapi.yaml` declares.
fn spec_routes() -> Vec<(String, String)> {
    spec_operations()
        .into_iter()
        .map(|(route, _)| route)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_routes_match_openapi_yaml() {
    let mut declared = spec_routes();
    let mut served: Vec<(String, String)> = crdt_hub::http::api::ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .chain(
            [("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")]
                .map(|(m, p)| (m.into(), p.into())),
        )
        .collect();
    declared.sort();
    served.sort();
    assert_eq!(
        declared, served,
        "openapi.yaml and the served routes differ"
    );

    // And each one really answers (not with the "no such route" 404).
    let server = TestServer::start().await;
    let mut client = YClient::connect(&server.url("spec")).await;
    client.insert("t", 0, "x").await;
    let mut check = YClient::connect(&server.url("spec")).await;
    check.until("x", |c| c.text("t") == "x").await;
    for (method, path) in &declared {
        if path.ends_with("/events") {
            let response =
                http_send(server.addr, "GET", "/api/rooms/spec/events", &[], vec![]).await;
            assert_eq!(response.status(), 200);
            continue;
        }
        let concrete = path.replace("{room}", "spec");
        let (concrete, body) = match (method.as_str(), concrete.as_str()) {
            ("delete", p) => (format!("{p}?confirm=wrong"), vec![]),
            ("post", p) if p.ends_with("/update") => (p.to_string(), update_inserting("y")),
            ("post", p @ "/api/revocations") => (p.to_string(), br#"{"sub": "x"}"#.to_vec()),
            (_, p) => (p.to_string(), vec![]),
        };
        let response =
            http_request(server.addr, &method.to_uppercase(), &concrete, &[], body).await;
        let body = String::from_utf8_lossy(&response.body);
        assert!(
            !(response.status == 404 && body.contains("\"not found\"")) && response.status != 405,
            "{method} {concrete} is declared but not served: {} {body}",
            response.status
        );
    }
    server.stop().await;
}
