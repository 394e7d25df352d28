//! Every API route with every kind of caller, generated from the route
//! table the gate authorizes through (`crdt_hub::http::api::ROUTES`), so
//! that a new route cannot skip the matrix: no token (401), a token of a
//! lower role than the route's (403), a token for another room (403), and
//! the route's role or higher (anything but 401/403).

use crdt_hub::auth::Role;
use crdt_hub::http::api::{ApiRoute, ROUTES};

use crate::support::{
    ServerProcess, http_request, http_send, sqlite_url, temp_dir, update_inserting,
};

const SECRET: &str = "roles-secret-0123456789";

fn token(rooms: &[&str], role: Role) -> String {
    crate::support::token(SECRET, rooms, role)
}

/// The status `route` answers for room `room` with `authorization`.
async fn status(server: &ServerProcess, route: &ApiRoute, authorization: Option<&str>) -> u16 {
    let path = route.path.replace("{room}", "matrix");
    let (path, body, headers): (String, Vec<u8>, Vec<(&str, &str)>) =
        match (route.method, route.path) {
            ("delete", _) => (format!("{path}?confirm=wrong"), vec![], vec![]),
            ("post", p) if p.ends_with("/update") => (path, update_inserting("y"), vec![]),
            ("post", p) if p.ends_with("/restore") => (
                path,
                br#"{"version": 999999}"#.to_vec(),
                vec![("content-type", "application/json")],
            ),
            ("post", "/api/revocations") => (
                path,
                br#"{"sub": "nobody-in-particular"}"#.to_vec(),
                vec![("content-type", "application/json")],
            ),
            _ => (path, vec![], vec![]),
        };
    let mut headers = headers;
    if let Some(value) = authorization {
        headers.push(("authorization", value));
    }
    let method = route.method.to_uppercase();
    if route.path.ends_with("/events") {
        // A stream: the status line is enough.
        return http_send(server.addr, &method, &path, &headers, body)
            .await
            .status()
            .as_u16();
    }
    http_request(server.addr, &method, &path, &headers, body)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_with_every_role() {
    let dir = temp_dir();
    let server = ServerProcess::start(&sqlite_url(dir.path()), &["--auth-secret", SECRET]).await;
    // The room exists, so that reads find it.
    let writer = format!("Bearer {}", token(&["matrix"], Role::Write));
    let seeded = http_request(
        server.addr,
        "POST",
        "/api/rooms/matrix/update",
        &[("authorization", &writer)],
        update_inserting("x"),
    )
    .await;
    assert_eq!(seeded.status, 200);

    let mut checked = 0;
    for route in ROUTES {
        let label = format!("{} {}", route.method, route.path);
        let Some(needed) = route.role else {
            assert!(
                ![401, 403].contains(&status(&server, route, None).await),
                "{label} is public"
            );
            continue;
        };
        assert_eq!(
            status(&server, route, None).await,
            401,
            "{label} without a token"
        );
        // A route that acts on every room needs a token for every room.
        let rooms: &[&str] = if route.every_room {
            &["**"]
        } else {
            &["matrix"]
        };
        for role in [Role::Read, Role::Write, Role::Admin] {
            let bearer = format!("Bearer {}", token(rooms, role));
            let got = status(&server, route, Some(&bearer)).await;
            if role < needed {
                assert_eq!(got, 403, "{label} with a {} token", role.name());
            } else {
                assert!(
                    ![401, 403].contains(&got),
                    "{label} with a {} token: {got}",
                    role.name()
                );
            }
            checked += 1;
        }
        if route.path.contains("{room}") || route.every_room {
            let elsewhere = format!("Bearer {}", token(&["other"], Role::Admin));
            assert_eq!(
                status(&server, route, Some(&elsewhere)).await,
                403,
                "{label} with an admin token for another room"
            );
        }
    }
    assert!(checked >= 3 * 13, "the matrix ran");

    // An /api path no route serves is refused outright with auth on.
    let admin = format!("Bearer {}", token(&["**"], Role::Admin));
    let unknown = http_request(
        server.addr,
        "GET",
        "/api/rooms/matrix/secret-new-route",
        &[("authorization", &admin)],
        vec![],
    )
    .await;
    assert_eq!(unknown.status, 404);
    let (exit, logs) = server.terminate().await;
    assert!(exit.success(), "{logs}");
}
