//! Opening benchmark connections: loopback only, with a timeout, and many at
//! once under a concurrency cap, optionally each from its own loopback
//! source address (one address has only the ephemeral port range's ~28k
//! ports towards one server port).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::wire::{Incoming, Wire};

pub type Ws = WebSocketStream<TcpStream>;

/// What a measuring reader got next.
pub enum Read {
    /// A binary frame (text, ping and pong frames are skipped).
    Frame(Bytes),
    /// The run told readers to stop.
    Stopped,
    /// The socket ended first: why, for the report.
    Closed(String),
}

/// The next binary frame from `stream`, unless `stop` changes first.
pub async fn next_binary(
    stream: &mut futures_util::stream::SplitStream<Ws>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Read {
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => return Read::Stopped,
            message = stream.next() => message,
        };
        return match message {
            Some(Ok(WsMessage::Binary(frame))) => Read::Frame(frame),
            Some(Ok(WsMessage::Close(close))) => {
                Read::Closed(format!("closed by server: {close:?}"))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => Read::Closed(format!("read failed: {e}")),
            None => Read::Closed("connection ended".to_owned()),
        };
    }
}

/// How clients connect.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Covers TCP connect, the WebSocket handshake and, with
    /// `await_greeting`, the server's first message.
    pub timeout: Duration,
    /// Wait until the server has answered (y-websocket: its SyncStep1;
    /// Hocuspocus: Authenticated), i.e. the client is really in the room.
    pub await_greeting: bool,
    /// tungstenite's read chunk; small keeps 10k idle sockets cheap.
    pub read_buffer: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            await_greeting: true,
            read_buffer: 8 * 1024,
        }
    }
}

/// The socket address of a `ws://` URL, refused unless it is on loopback:
/// the benchmark must never send load anywhere else.
///
/// # Errors
/// A URL that does not parse, is not `ws://`, or names a non-loopback host.
pub fn loopback_addr(url: &str) -> Result<SocketAddr> {
    let request = url.into_client_request().context("parsing URL")?;
    let uri = request.uri();
    if uri.scheme_str() != Some("ws") {
        bail!("only ws:// URLs are supported: {url}");
    }
    let host = uri.host().context("URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse()
            .with_context(|| format!("host {host} is not an IP"))?
    };
    if !ip.is_loopback() {
        bail!("refusing to load a non-loopback address: {ip}");
    }
    Ok(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

/// Opens one client connection to `wire`'s room on the server at `base`.
///
/// # Errors
/// Connect, handshake or greeting failures, and the timeout.
pub async fn connect(base: &str, wire: &Wire, options: ConnectOptions) -> Result<Ws> {
    connect_from(base, wire, options, None).await
}

/// Like [`connect`], from the local address `source` (any port) when given.
///
/// # Errors
/// As [`connect`]; also a source address that cannot be bound.
pub async fn connect_from(
    base: &str,
    wire: &Wire,
    options: ConnectOptions,
    source: Option<IpAddr>,
) -> Result<Ws> {
    tokio::time::timeout(options.timeout, connect_inner(base, wire, options, source))
        .await
        .context("timed out")?
}

/// A TCP connection to `to` from `source`, the port left to `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`): the kernel then picks it for the whole
/// 4-tuple instead of reserving one at `bind`, which is both faster with
/// tens of thousands in use and what lets one address use every port.
async fn tcp_from(source: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    if !source.is_loopback() {
        bail!("refusing a non-loopback source address: {source}");
    }
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and a c_int option of its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("IP_BIND_ADDRESS_NO_PORT");
        }
    }
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding source address {source}"))?;
    Ok(socket.connect(to).await?)
}

async fn connect_inner(
    base: &str,
    wire: &Wire,
    options: ConnectOptions,
    source: Option<IpAddr>,
) -> Result<Ws> {
    let url = wire.url(base);
    let to = loopback_addr(&url)?;
    let tcp = match source {
        Some(source) => tcp_from(source, to).await,
        None => TcpStream::connect(to).await.map_err(Into::into),
    }
    .context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(options.read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .context("WebSocket handshake")?;
    if let Some(hello) = wire.hello() {
        ws.send(WsMessage::Binary(hello.into())).await?;
    }
    if options.await_greeting {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Binary(frame))) => match wire.parse(&frame) {
                    Incoming::PermissionDenied => bail!("server denied access"),
                    Incoming::Malformed => bail!("malformed greeting"),
                    _ => break,
                },
                Some(Ok(WsMessage::Close(close))) => bail!("closed by server: {close:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading greeting"),
                None => bail!("connection ended before the greeting"),
            }
        }
    }
    Ok(ws)
}

/// What opening many clients gave.
pub struct Opened {
    /// One slot per requested client; `None` where it failed.
    pub sockets: Vec<Option<Ws>>,
    pub failures: usize,
    /// The first few failure messages, for the report.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

/// Opens `wires.len()` clients, at most `concurrency` handshakes at a time.
pub async fn connect_many(
    base: &str,
    wires: &[Arc<Wire>],
    concurrency: usize,
    options: ConnectOptions,
) -> Opened {
    connect_each(&vec![base; wires.len()], wires, concurrency, options).await
}

/// Like [`connect_many`], but client `i` connects from the local address
/// `sources[i]` (one entry per client).
pub async fn connect_many_from(
    base: &str,
    wires: &[Arc<Wire>],
    sources: &[IpAddr],
    concurrency: usize,
    options: ConnectOptions,
) -> Opened {
    assert_eq!(sources.len(), wires.len(), "one source address per client");
    let sources: Vec<Option<IpAddr>> = sources.iter().copied().map(Some).collect();
    open_all(
        &vec![base; wires.len()],
        wires,
        &sources,
        concurrency,
        options,
    )
    .await
}

/// Like [`connect_many`], but client `i` connects to the server at
/// `bases[i]` (one entry per client): a room's clients spread over the
/// nodes of a cluster.
pub async fn connect_each(
    bases: &[&str],
    wires: &[Arc<Wire>],
    concurrency: usize,
    options: ConnectOptions,
) -> Opened {
    open_all(bases, wires, &vec![None; wires.len()], concurrency, options).await
}

async fn open_all(
    bases: &[&str],
    wires: &[Arc<Wire>],
    sources: &[Option<IpAddr>],
    concurrency: usize,
    options: ConnectOptions,
) -> Opened {
    assert_eq!(bases.len(), wires.len(), "one server per client");
    let started = Instant::now();
    let results: Vec<(usize, Result<Ws>)> =
        stream::iter(bases.iter().zip(wires).zip(sources).enumerate())
            .map(|(index, ((base, wire), &source))| async move {
                (index, connect_from(base, wire, options, source).await)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let mut sockets: Vec<Option<Ws>> = (0..wires.len()).map(|_| None).collect();
    let mut failures = 0;
    let mut errors = Vec::new();
    for (index, result) in results {
        match result {
            Ok(ws) => sockets[index] = Some(ws),
            Err(e) => {
                failures += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    Opened {
        sockets,
        failures,
        errors,
        elapsed: started.elapsed(),
    }
}

/// Sends `frame` and reads until the server's SyncStep2 arrives; returns
/// its payload. Other frames (echoes, acks, awareness) are skipped.
///
/// # Errors
/// Socket errors, a close, or no SyncStep2 within `timeout`.
pub async fn request_sync_step2(
    ws: &mut Ws,
    wire: &Wire,
    frame: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes> {
    ws.send(WsMessage::Binary(frame.into())).await?;
    tokio::time::timeout(timeout, async {
        while let Some(message) = ws.next().await {
            if let WsMessage::Binary(frame) = message?
                && let Incoming::SyncStep2(payload) = wire.parse(&frame)
            {
                return Ok(frame.slice_ref(payload));
            }
        }
        bail!("connection ended before SyncStep2")
    })
    .await
    .context("no SyncStep2 in time")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(loopback_addr("ws://127.0.0.1:1234/r").is_ok());
        assert!(loopback_addr("ws://localhost:1234").is_ok());
        assert!(loopback_addr("ws://[::1]:1234").is_ok());
        assert!(loopback_addr("ws://10.0.0.1:1234").is_err());
        assert!(loopback_addr("ws://example.com:1234").is_err());
        assert!(loopback_addr("wss://127.0.0.1:1234").is_err());
    }
}
