//! One WebSocket connection: reads frames into its room, writes the room's
//! frames out, keeps the socket alive, and closes it with a code that says
//! why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crdt_store::RoomName;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};
use warp::ws::{Message, WebSocket};

use crate::close::{self, CloseReason};
use crate::protocol;
use crate::room::{Access, CloseSignal, JoinRefused, PeerId, PeerLink, RoomHandle, Rooms};

/// Per-connection limits and timings.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Frames queued for one client before it counts as too slow.
    pub outbox_capacity: usize,
    /// A ping is sent this often; a client silent for two intervals is
    /// considered dead.
    pub keepalive_interval: Duration,
    /// Longest a single socket write may block (a client that stopped
    /// reading fills its TCP window and would otherwise hold the task).
    pub write_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            outbox_capacity: 2048,
            keepalive_interval: Duration::from_secs(15),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Most frames written per flush when a client's queue backs up: enough to
/// turn many small writes into one syscall, few enough to keep reading.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// How long to wait for the client's answer to our close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

static NEXT_PEER_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one upgraded WebSocket until it closes.
pub async fn serve(
    ws: WebSocket,
    room: RoomName,
    access: Access,
    peer_addr: Option<SocketAddr>,
    rooms: Rooms,
    config: Arc<ConnectionConfig>,
    shutdown: CancellationToken,
) {
    let peer = NEXT_PEER_ID.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("conn", room = %room, conn = peer, addr = ?peer_addr);
    async move {
        debug!("connected");
        let mut ws = ws;
        let (outbox, outgoing) = mpsc::channel(config.outbox_capacity);
        let closer = Arc::new(CloseSignal::default());
        let link = PeerLink {
            outbox,
            closer: closer.clone(),
        };
        let handle = match rooms.join(&room, peer, access, link).await {
            Ok(handle) => handle,
            Err(refused) => {
                let reason = match refused {
                    JoinRefused::ShuttingDown => close::SHUTTING_DOWN,
                    JoinRefused::LoadFailed | JoinRefused::Unloading => close::LOAD_FAILED,
                };
                close_socket(&mut ws, reason).await;
                return;
            }
        };
        let mut session = Session {
            ws,
            outgoing,
            closer,
            room: handle,
            peer,
            config,
        };
        let reason = session.run(&shutdown).await;
        session.room.leave(peer).await;
        if let Some(reason) = reason {
            debug!(code = reason.code, reason = reason.reason, "closing");
            close_socket(&mut session.ws, reason).await;
        }
        debug!("disconnected");
    }
    .instrument(span)
    .await;
}

struct Session {
    ws: WebSocket,
    outgoing: mpsc::Receiver<Bytes>,
    closer: Arc<CloseSignal>,
    room: RoomHandle,
    peer: PeerId,
    config: Arc<ConnectionConfig>,
}

impl Session {
    /// Runs until the socket ends; returns the close frame to send, if any.
    async fn run(&mut self, shutdown: &CancellationToken) -> Option<CloseReason> {
        let keepalive = self.config.keepalive_interval;
        let mut ping = interval_at(Instant::now() + keepalive, keepalive);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                biased;
                reason = self.closer.closed() => return Some(reason),
                () = shutdown.cancelled() => return Some(close::SHUTTING_DOWN),
                frame = self.outgoing.recv() => {
                    let frame = frame?;
                    if let Err(e) = self.write_frames(frame).await {
                        debug!(error = %e, "write failed");
                        return None;
                    }
                }
                incoming = self.ws.next() => {
                    let message = match incoming {
                        None => return None,
                        Some(Ok(message)) => message,
                        Some(Err(e)) if is_too_big(&e) => {
                            warn!(error = %e, "frame too large");
                            return Some(close::MESSAGE_TOO_BIG);
                        }
                        Some(Err(e)) => {
                            debug!(error = %e, "read failed");
                            return None;
                        }
                    };
                    last_heard = Instant::now();
                    if let Some(reason) = self.on_message(message).await {
                        return Some(reason);
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > keepalive * 2 {
                        debug!("no sign of life within the keepalive window");
                        return Some(close::KEEPALIVE_TIMEOUT);
                    }
                    if timeout(self.config.write_timeout, self.ws.send(Message::ping(Vec::new()))).await.map_or(true, |r| r.is_err()) {
                        return None;
                    }
                }
            }
        }
    }

    /// Handles one message from the client; returns a reason to close.
    async fn on_message(&mut self, message: Message) -> Option<CloseReason> {
        if message.is_binary() {
            let frame = message.into_bytes();
            return match protocol::parse_frame(&frame) {
                Ok(messages) => {
                    if self.room.send_frame(self.peer, messages).await {
                        None
                    } else {
                        Some(close::ROOM_FAILED)
                    }
                }
                Err(e) => {
                    warn!(error = %e, cause = ?std::error::Error::source(&e), len = frame.len(), "protocol error");
                    Some(close::PROTOCOL_ERROR)
                }
            };
        }
        if message.is_text() {
            warn!("text frame received; y-websocket speaks binary");
            return Some(close::TEXT_FRAME);
        }
        // Ping is answered by the WebSocket layer, pong only proves life,
        // close is answered by the WebSocket layer and ends the stream.
        None
    }

    /// Writes `first` and whatever else is already queued, then flushes
    /// once: a backed-up client costs one syscall per batch, not per frame.
    async fn write_frames(&mut self, first: Bytes) -> Result<(), String> {
        let ws = &mut self.ws;
        let outgoing = &mut self.outgoing;
        let write = async {
            ws.feed(Message::binary(first)).await?;
            for _ in 1..MAX_FRAMES_PER_FLUSH {
                match outgoing.try_recv() {
                    Ok(frame) => ws.feed(Message::binary(frame)).await?,
                    Err(_) => break,
                }
            }
            ws.flush().await
        };
        match timeout(self.config.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("write timed out".into()),
        }
    }
}

/// Sends a close frame and waits briefly for the client's answer, so that
/// unread client data does not turn our close into a TCP reset that would
/// hide the close code.
async fn close_socket(ws: &mut WebSocket, reason: CloseReason) {
    let handshake = async {
        if ws
            .send(Message::close_with(reason.code, reason.reason))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, handshake).await;
}

/// Whether a read error is tungstenite refusing a frame over the size limit.
fn is_too_big(error: &warp::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tungstenite) = e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return matches!(
                tungstenite,
                tokio_tungstenite::tungstenite::Error::Capacity(_)
            );
        }
        source = e.source();
    }
    false
}
