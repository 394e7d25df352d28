//! Hostile networks (issue 27, items 2 and 6), replayed on loopback against
//! the real binary or the in-process server: idle and trickling sockets,
//! one address opening more sockets than the server has file descriptors,
//! and large request bodies. The attacker speaks from 127.0.0.2 (all of
//! 127/8 is loopback on Linux: binding a socket to it needs no setup), the
//! honest clients from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::{
    Bystanders, ServerOptions, ServerProcess, TestServer, YClient, http_get, http_request,
    sqlite_url, temp_dir,
};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A TCP connection to `server` from `ip`.
async fn connect_from(ip: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(server).await
}

/// Reads (and discards anything, such as a 408) until the server closes
/// the socket; how long that took, or `None` if it stayed open `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// File descriptors the process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// The attacker of item 2: `count` sockets from `ip` that never send a
/// byte, each opened again a second after the server closes it, until
/// `stop`. Returns how many connects succeeded so far.
fn hold_idle_sockets(
    ip: IpAddr,
    server: SocketAddr,
    count: usize,
    stop: &CancellationToken,
) -> Arc<AtomicUsize> {
    let opened = Arc::new(AtomicUsize::new(0));
    for i in 0..count {
        let opened = opened.clone();
        let stop = stop.clone();
        // Paced, 50 every 10 ms: a burst of 1,100 SYNs at once overflows
        // the listen queue, and the kernel silently drops part of them (the
        // client believes it connected, the server never sees the socket),
        // which would understate the attack.
        let pace = Duration::from_millis(10 * (i / 50) as u64);
        tokio::spawn(async move {
            tokio::time::sleep(pace).await;
            while !stop.is_cancelled() {
                let Ok(mut socket) = connect_from(ip, server).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let mut buffer = [0u8; 64];
                tokio::select! {
                    _ = async { while !matches!(socket.read(&mut buffer).await, Ok(0) | Err(_)) {} } => {}
                    () = stop.cancelled() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    opened
}

/// Item 2, with every default: one address holds 1,100 idle sockets
/// against a server allowed 1,024 file descriptors, and keeps reopening
/// those the server closes. The server keeps at most
/// `--max-connections-per-ip` of them, so a client from another address
/// connects and syncs, and `/healthz` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_leave_the_server_to_everyone_else() {
    // The attacker's side needs more than 1,100 descriptors itself.
    rlimit::increase_nofile_limit(8192).unwrap();
    let dir = temp_dir();
    let server = ServerProcess::start_with_nofile(&sqlite_url(dir.path()), &[], 1024).await;
    assert!(
        server.logged("soft=1024 hard=1024"),
        "the server logs its file descriptor limit"
    );
    let pid = server.pid();
    let before = open_fds(pid);

    let stop = CancellationToken::new();
    let started = Instant::now();
    let opened = hold_idle_sockets(ATTACKER, server.addr, 1_100, &stop);
    let deadline = Instant::now() + Duration::from_secs(10);
    while opened.load(Ordering::Relaxed) < 1_100 {
        assert!(Instant::now() < deadline, "the attacker could not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the server take every socket off its queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let under_attack = open_fds(pid);

    let asked = Instant::now();
    let (status, _) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
    let healthz = asked.elapsed();
    let mut writer = YClient::connect(&server.url("office")).await;
    writer.insert("notes", 0, "still here").await;
    let mut reader = YClient::connect(&server.url("office")).await;
    reader
        .until("the text from the other client", |c| {
            c.text("notes") == "still here"
        })
        .await;
    writer
        .until("its own text back from the server", |c| {
            c.text("notes") == "still here"
        })
        .await;

    // Past the header read timeout (5 s) the server has closed the idle
    // sockets it kept, and the attacker has opened them again: still fine,
    // and a room of honest clients kept its pace all along.
    // The office clients leave; two bystanders take their descriptors.
    drop(writer);
    drop(reader);
    let mut bystanders = Bystanders::join(&server.url("bystanders")).await;
    let six_seconds_in = tokio::time::Instant::from_std(started + Duration::from_secs(6));
    bystanders
        .keep_editing_while(tokio::time::sleep_until(six_seconds_in))
        .await;
    bystanders.assert_kept_syncing();
    let (status, _) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
    let later = open_fds(pid);
    let attempts = opened.load(Ordering::Relaxed);
    stop.cancel();

    eprintln!(
        "server fds: {before} before, {under_attack} with 1,100 idle sockets from one address, \
         {later} after 6 s; /healthz under attack in {healthz:?}; {attempts} attacker connects"
    );
    assert!(
        under_attack <= before + 256 + 8,
        "the server holds at most --max-connections-per-ip (256) of the attacker's sockets: {before} fds before, {under_attack} under attack"
    );
    // The two bystanders' sockets besides the attacker's places.
    assert!(
        later <= before + 256 + 8 + 2,
        "{later} fds after 6 s of attack"
    );
    assert!(server.logged("over --max-connections-per-ip"));
    assert!(
        !server.logged("Too many open files"),
        "the server never ran out of descriptors"
    );
    drop(bystanders);
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}

/// A socket that sends its request head one byte a second (or nothing)
/// is closed once `--header-read-timeout` has passed since it connected.
#[tokio::test]
async fn a_socket_trickling_its_request_head_is_closed_at_the_header_read_timeout() {
    let dir = temp_dir();
    let server =
        ServerProcess::start(&sqlite_url(dir.path()), &["--header-read-timeout", "2s"]).await;
    let mut trickler = connect_from(ATTACKER, server.addr).await.unwrap();
    let mut idle = connect_from(ATTACKER, server.addr).await.unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: crdt-hub\r\n\r\n";
    let start = Instant::now();
    let mut sent = 0;
    let closed = loop {
        if trickler.write_all(&head[sent..=sent]).await.is_err() {
            break start.elapsed();
        }
        sent += 1;
        if closed_within(&mut trickler, Duration::from_secs(1))
            .await
            .is_some()
        {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "still open after {sent} bytes"
        );
    };
    assert!(sent < head.len(), "the head was never completed");
    assert!(
        closed >= Duration::from_millis(1_500) && closed <= Duration::from_secs(4),
        "closed after {closed:?}, with a 2 s header read timeout"
    );
    let idle_closed = closed_within(&mut idle, Duration::from_secs(3))
        .await
        .expect("an idle socket is closed too");
    assert!(idle_closed <= Duration::from_secs(3));
    // A client that sends its request promptly is served as before.
    let (status, _) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}

/// The N+1th socket from one address is closed at once, before any HTTP,
/// and WebSockets keep their place after the upgrade; another address
/// still gets in, and a closing WebSocket gives its place back.
#[tokio::test]
async fn over_the_per_ip_cap_a_socket_is_closed_at_once_while_others_get_in() {
    let dir = temp_dir();
    let server = ServerProcess::start(
        &sqlite_url(dir.path()),
        &[
            "--max-connections-per-ip",
            "8",
            "--header-read-timeout",
            "30s",
        ],
    )
    .await;
    let url = server.url("capped");
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect_from(ATTACKER, server.addr).await.unwrap());
    }
    let mut upgraded = Vec::new();
    for _ in 0..4 {
        let stream = connect_from(ATTACKER, server.addr).await.unwrap();
        let mut client = YClient::connect_over(&url, stream).await;
        client.pump_for(Duration::from_millis(50)).await;
        upgraded.push(client);
    }
    // The idle ones are still open.
    for socket in &mut idle {
        assert!(
            closed_within(socket, Duration::from_millis(50))
                .await
                .is_none()
        );
    }

    let mut ninth = connect_from(ATTACKER, server.addr).await.unwrap();
    let refused = closed_within(&mut ninth, Duration::from_secs(2))
        .await
        .expect("the ninth socket from 127.0.0.2 is closed");
    assert!(refused < Duration::from_secs(1), "closed after {refused:?}");

    // 127.0.0.1 is not affected, and syncs with the attacker's WebSockets.
    let (status, _) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
    let mut honest = YClient::connect(&url).await;
    honest.insert("t", 0, "hello").await;
    upgraded[0]
        .until("the honest client's edit", |c| c.text("t") == "hello")
        .await;

    // A WebSocket that closes gives its place back.
    drop(upgraded.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from(ATTACKER, server.addr).await.unwrap();
        if closed_within(&mut again, Duration::from_millis(300))
            .await
            .is_none()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed WebSocket's place never came back"
        );
    }
    drop(honest);
    drop(upgraded);
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}

/// One HTTP/1.1 response read off a raw socket: status, head, body.
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Reads one response (an interim `100 Continue` included) off `stream`.
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(crate::support::TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a response: {bytes:?}");
        bytes.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut response = RawResponse {
        status,
        head,
        body: bytes[head_end..].to_vec(),
    };
    let length: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while response.body.len() < length {
        let n = tokio::time::timeout(crate::support::TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("the body in time")
            .expect("read");
        assert!(n > 0, "closed in the body");
        response.body.extend_from_slice(&buffer[..n]);
    }
    response
}

/// A Yjs v1 update of exactly `bytes` bytes (one long text insert).
fn big_update(bytes: usize) -> Vec<u8> {
    use yrs::{ReadTxn, StateVector, Text, Transact};
    let encode = |chars: usize| {
        let doc = yrs::Doc::with_client_id(1);
        let text = doc.get_or_insert_text("big");
        text.insert(&mut doc.transact_mut(), 0, &"x".repeat(chars));
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let overhead = encode(bytes).len() - bytes;
    let update = encode(bytes - overhead);
    assert_eq!(update.len(), bytes);
    update
}

/// Item 6: past `--max-body-size` a body gets 413 (it got 405) without a
/// byte of it read, a chunked body gets 411, and one within the limit is
/// applied as before.
#[tokio::test]
async fn an_oversized_body_gets_413_and_a_chunked_one_411() {
    let server = TestServer::start_with(ServerOptions {
        limits: crdt_hub::limits::LimitsConfig {
            max_body_size: 1 << 20,
            ..crdt_hub::limits::LimitsConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/big/update HTTP/1.1\r\nHost: crdt-hub\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 413, "{}", response.head);
    let error: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("1048576"),
        "{error}"
    );

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/rooms/big/update HTTP/1.1\r\nHost: crdt-hub\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 411, "{}", response.head);

    let update = big_update(1_000);
    let response = http_request(server.addr, "POST", "/api/rooms/big/update", &[], update).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["changed"], true);
    assert_eq!(server.app.limits.bodies.in_flight(), 0);
    server.stop().await;
}

/// Item 6: eight concurrent 8 MiB bodies against a 16 MiB in-flight bound.
/// Two are read at a time; the others wait, and those still waiting after
/// a second get 503 with Retry-After without a byte of their body read
/// (they sent `Expect: 100-continue`). The server never held more than
/// 16 MiB of bodies, and holds none afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bodies_stay_within_the_in_flight_bound() {
    let server = TestServer::start_with(ServerOptions {
        limits: crdt_hub::limits::LimitsConfig {
            max_body_bytes_in_flight: 16 << 20,
            ..crdt_hub::limits::LimitsConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let update = Arc::new(big_update(8 << 20));

    let mut posts = Vec::new();
    for _ in 0..8 {
        let update = update.clone();
        let addr = server.addr;
        posts.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/rooms/bodies/update HTTP/1.1\r\nHost: crdt-hub\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                update.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let first = read_response(&mut stream).await;
            if first.status != 100 {
                return (first, false);
            }
            // Admitted: send the body slowly (about 2 s), so the others
            // must wait for it.
            for chunk in update.chunks(1 << 20) {
                stream.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (read_response(&mut stream).await, true)
        }));
    }
    let mut applied = 0;
    let mut busy = 0;
    for post in posts {
        let (response, sent_body) = post.await.unwrap();
        match response.status {
            200 => {
                assert!(sent_body);
                applied += 1;
            }
            503 => {
                assert!(!sent_body, "refused before its body was read");
                assert_eq!(response.header("retry-after"), Some("1"));
                busy += 1;
            }
            other => panic!("unexpected {other}: {}", response.head),
        }
    }
    let bodies = &server.app.limits.bodies;
    eprintln!(
        "{applied} applied, {busy} refused with 503; at most {} bytes of bodies held",
        bodies.peak()
    );
    assert!(applied >= 2, "two bodies fit at once");
    assert!(busy >= 1, "bodies past the bound were refused");
    assert_eq!(applied + busy, 8);
    assert!(
        bodies.peak() <= 16 << 20,
        "held {} bytes of bodies at once",
        bodies.peak()
    );
    assert_eq!(bodies.in_flight(), 0);
    server.stop().await;
}

/// The status of the response on `stream`, or `None` when the server
/// closed or reset the socket first (a body refused unread, while the
/// client was still sending it).
async fn status_or_reset(stream: &mut TcpStream) -> Option<u16> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 1024];
    while !bytes.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(crate::support::TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("a response in time")
        {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&bytes)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib << 10)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Item 6 in memory, against the real binary: eight clients send 8 MiB
/// bodies at once, straight away (no `Expect`), with a 16 MiB in-flight
/// bound. The process's peak grows by about the bound, not by the 64 MiB
/// sent (plus a copy, as before), and its resident memory comes back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_flood_is_bounded_in_memory_and_the_memory_comes_back() {
    let dir = temp_dir();
    let server = ServerProcess::start(
        &sqlite_url(dir.path()),
        &["--max-body-bytes-in-flight", "16MiB"],
    )
    .await;
    let pid = server.pid();
    // A first request, so that what every request allocates once is there.
    let (status, _) = http_get(server.addr, "/api/rooms").await;
    assert_eq!(status, 200);
    let (before, peak_before) = rss(pid);

    // Not an update (the decode guard refuses 0xff… at once): this
    // measures the bodies, not the documents they would make.
    let body = Arc::new(vec![0xffu8; 8 << 20]);
    let mut posts = Vec::new();
    for _ in 0..8 {
        let body = body.clone();
        let addr = server.addr;
        posts.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/rooms/flood/update HTTP/1.1\r\nHost: crdt-hub\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            // A refused client's body is not read: the server may close
            // (or reset) the socket while it is still being written.
            let _ = stream.write_all(&body).await;
            status_or_reset(&mut stream).await
        }));
    }
    let mut statuses = Vec::new();
    for post in posts {
        statuses.push(post.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| matches!(s, Some(400 | 503) | None)),
        "read and refused by the decode guard, or refused unread: {statuses:?}"
    );
    assert!(
        statuses.contains(&Some(400)),
        "some bodies were read: {statuses:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after, peak) = rss(pid);
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "RSS {:.1} MiB before, peak {:.1} MiB (was {:.1}), {:.1} MiB after; {statuses:?}",
        mib(before),
        mib(peak),
        mib(peak_before),
        mib(after)
    );
    assert!(
        peak <= before.max(peak_before) + (32 << 20),
        "the peak grew past the 16 MiB bound (plus slack): {:.1} → {:.1} MiB",
        mib(before),
        mib(peak)
    );
    assert!(
        after <= before + (8 << 20),
        "memory stayed held: {:.1} MiB before, {:.1} MiB after",
        mib(before),
        mib(after)
    );
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");
}
