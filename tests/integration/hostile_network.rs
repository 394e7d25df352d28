//! Hostile networks (issue 27, item 2), replayed on loopback against the
//! real binary: idle and trickling sockets, and one address opening more
//! sockets than the server has file descriptors. The attacker speaks from
//! 127.0.0.2 (all of 127/8 is loopback on Linux: binding a socket to it
//! needs no setup), the honest clients from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::{ServerProcess, YClient, http_get, sqlite_url, temp_dir};

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
    // sockets it kept, and the attacker has opened them again: still fine.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed())).await;
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
    assert!(later <= before + 256 + 8, "{later} fds after 6 s of attack");
    assert!(server.logged("over --max-connections-per-ip"));
    assert!(
        !server.logged("Too many open files"),
        "the server never ran out of descriptors"
    );
    drop(writer);
    drop(reader);
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
