//! The soak's HTTP side: a bare HTTP/1.0 GET over a `TcpStream` (a few
//! requests a second do not justify an HTTP client dependency), the
//! server's own gauges from `/metrics`, and the reader that keeps hitting
//! the REST API while rooms load and unload under it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use memchr::memmem;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use yrs::block::ClientID;
use yrs::{ReadTxn, Transact};

use super::churn::ChurnRooms;
use crate::converge;
use crate::workload::TEXT_NAME;

/// A response, body already de-chunked.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET path` on the server at `addr`. HTTP/1.0 so that the server ends
/// the body by closing the connection: the socket is gone on both sides
/// once this returns, and the descriptor count does not see it linger.
///
/// # Errors
/// Connect or read failures, a response that does not parse, 10 s passing.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut tcp = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        parse(&raw)
    })
    .await
    .with_context(|| format!("GET {path} timed out"))?
    .with_context(|| format!("GET {path}"))
}

fn parse(raw: &[u8]) -> Result<Response> {
    let end = memmem::find(raw, b"\r\n\r\n").context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end])?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

/// A chunked body, joined (servers should not chunk for HTTP/1.0; some do).
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = memmem::find(body, b"\r\n").context("no chunk size")?;
        let size = std::str::from_utf8(&body[..line])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        body = &body[line + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).context("short chunk")?);
        body = body.get(size + 2..).context("short chunk")?;
    }
}

/// The server's view: WebSockets open and rooms loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub connections: u64,
    pub rooms: u64,
}

/// `crdt_hub_connections` and `crdt_hub_rooms` from Prometheus text. A
/// gauge the server has not touched yet is not exported: it reads 0.
pub fn gauges(metrics: &str) -> Gauges {
    let value = |name: &str| {
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
            rest.trim().parse::<f64>().ok().map(|v| v.max(0.0) as u64)
        })
    };
    Gauges {
        connections: value("crdt_hub_connections").unwrap_or(0),
        rooms: value("crdt_hub_rooms").unwrap_or(0),
    }
}

/// The gauges, asked of the server at `addr`.
///
/// # Errors
/// The request fails or is not answered with 200.
pub async fn read_gauges(addr: SocketAddr) -> Result<Gauges> {
    let response = get(addr, "/metrics").await?;
    if response.status != 200 {
        bail!("GET /metrics: {}", response.status);
    }
    Ok(gauges(&String::from_utf8_lossy(&response.body)))
}

/// What the API reader did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiStats {
    pub requests: u64,
    pub failures: u64,
    /// The first few failures.
    pub errors: Vec<String>,
}

impl ApiStats {
    pub fn merge(&mut self, other: Self) {
        self.requests += other.requests;
        self.failures += other.failures;
        let room = 5usize.saturating_sub(self.errors.len());
        self.errors.extend(other.errors.into_iter().take(room));
    }
}

/// The reads it cycles through; `{}` is a churn room that has content.
const ENDPOINTS: [&str; 6] = [
    "/api/rooms/{}/state",
    "/api/rooms/{}",
    "/api/rooms/{}/json",
    "/api/rooms/{}/snapshots",
    "/api/rooms",
    "/healthz",
];

/// Sends one API read every `interval` until `stop`. Reads of a churn room
/// are checked against what that room is known to hold by then: `state`
/// must cover every update its workers had confirmed, `json` must carry at
/// least as much text. The room may be loaded, unloading or in storage only.
pub async fn reader(
    addr: SocketAddr,
    rooms: Arc<ChurnRooms>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> ApiStats {
    let mut stats = ApiStats::default();
    let mut tick = tokio::time::interval(interval);
    for n in 0usize.. {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let endpoint = ENDPOINTS[n % ENDPOINTS.len()];
        let written = rooms.written();
        let room = (!written.is_empty()).then(|| written[(n / ENDPOINTS.len()) % written.len()]);
        if endpoint.contains("{}") && room.is_none() {
            continue;
        }
        stats.requests += 1;
        if let Err(e) = read_one(addr, &rooms, endpoint, room.unwrap_or(0)).await {
            stats.failures += 1;
            if stats.errors.len() < 5 {
                stats.errors.push(format!("{e:#}"));
            }
        }
    }
    stats
}

async fn read_one(addr: SocketAddr, rooms: &ChurnRooms, endpoint: &str, room: usize) -> Result<()> {
    let wire = rooms.wire(room);
    let path = endpoint.replace("{}", wire.room());
    let floor = rooms.expected_of(room);
    let response = get(addr, &path).await?;
    if response.status != 200 {
        bail!(
            "GET {path}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    if endpoint.ends_with("/state") {
        let doc = converge::doc_from_update(&Bytes::from(response.body))
            .with_context(|| format!("GET {path}"))?;
        let sv = doc.transact().state_vector();
        for &(client, clock) in &floor.clocks {
            let got = u64::from(sv.get(&ClientID::new(client)));
            if got < clock {
                bail!("GET {path}: client {client} at clock {got}, {clock} was confirmed");
            }
        }
    } else if endpoint.ends_with("/json") {
        let value: serde_json::Value = serde_json::from_slice(&response.body)?;
        let len = value[TEXT_NAME].as_str().map_or(0, str::len) as u64;
        if len < floor.text_len {
            bail!(
                "GET {path}: text of {len} bytes, {} were confirmed",
                floor.text_len
            );
        }
    } else if endpoint.starts_with("/api") {
        serde_json::from_slice::<serde_json::Value>(&response.body)
            .with_context(|| format!("GET {path}: not JSON"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (200, &b"hi"[..]));
        let chunked = parse(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (chunked.status, chunked.body.as_slice()),
            (404, &b"abcde"[..])
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn gauges_come_from_prometheus_text() {
        let text = "# TYPE crdt_hub_connections gauge\ncrdt_hub_connections 12\ncrdt_hub_connections_total 40\ncrdt_hub_rooms 3\n";
        assert_eq!(
            gauges(text),
            Gauges {
                connections: 12,
                rooms: 3
            }
        );
        assert_eq!(gauges("crdt_hub_connections_total 4\n").connections, 0);
    }
}
