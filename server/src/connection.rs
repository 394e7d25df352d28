//! One WebSocket connection: reads frames into its room, writes the room's
//! frames out, keeps the socket alive, and closes it with a code that says
//! why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crdt_store::RoomName;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::awareness_guard::{StateError, StateLimits};
use crate::close::{self, CloseReason};
use crate::ip_connections::IpSlot;
use crate::limits::{Admission, ConnectionRate, Limits};
use crate::room::{
    Access, Next, OutboxLimits, PeerId, PeerInbox, PeerLink, RoomHandle, RoomUnavailable, Rooms,
};
use crate::saved::SavedQueue;
use crate::sessions::{Holder, Registered, Sessions};
use crate::shared_socket::{MAX_DIRECT_FRAME, WriteFailed};
use crate::subdocs::SubdocPolicy;
use crate::{metrics, protocol};

/// Per-connection limits and timings.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Frames queued for one client before it counts as too slow.
    pub outbox_capacity: usize,
    /// Bytes waiting for one client (behind the frame it is being sent)
    /// before it counts as too slow: a reader that drains steadily but more
    /// slowly than its room changes would otherwise pin 2048 large updates.
    pub outbox_max_bytes: usize,
    /// A ping is sent this often; a client silent for two intervals is
    /// considered dead.
    pub keepalive_interval: Duration,
    /// Longest a single socket write may block (a client that stopped
    /// reading fills its TCP window and would otherwise hold the task).
    pub write_timeout: Duration,
    /// Whether updates may create subdocuments (see [`crate::subdocs`]).
    pub subdocuments: SubdocPolicy,
    /// Bounds on each awareness state a client sends (see
    /// [`crate::awareness_guard`]).
    pub awareness: StateLimits,
    /// Documents one multiplexed (Hocuspocus) socket may have open: each
    /// is a peer in its room, with its own queue.
    pub max_documents: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            outbox_capacity: 2048,
            outbox_max_bytes: 64 << 20,
            keepalive_interval: Duration::from_secs(15),
            write_timeout: Duration::from_secs(10),
            subdocuments: SubdocPolicy::default(),
            awareness: StateLimits::default(),
            max_documents: 100,
        }
    }
}

/// Most frames written per flush when a client's queue backs up: enough to
/// turn many small writes into one syscall, few enough to keep reading.
pub(crate) const MAX_FRAMES_PER_FLUSH: usize = 256;

/// How long to wait for the client's answer to our close frame.
pub(crate) const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

static NEXT_PEER_ID: AtomicU64 = AtomicU64::new(1);

/// A peer id no other connection (or multiplexed document) has.
pub(crate) fn new_peer_id() -> PeerId {
    NEXT_PEER_ID.fetch_add(1, Ordering::Relaxed)
}

/// The socket type every connection task works with: a WebSocket over the
/// client's socket, its incoming frames counted ([`crate::frames`]). The
/// HTTP layer makes one at the upgrade and hands it here.
pub type Socket = tokio_tungstenite::WebSocketStream<crate::frames::CountedIo>;

/// A connection that passed every check before its upgrade.
pub struct Admitted {
    pub room: RoomName,
    pub access: Access,
    pub peer_addr: Option<SocketAddr>,
    /// Its place under `--max-connections`, given back when it closes.
    pub slot: OwnedSemaphorePermit,
    /// Its socket's place under `--max-connections-per-ip`, taken at
    /// accept and given back when the socket closes.
    pub ip_slot: Option<IpSlot>,
    pub rate: ConnectionRate,
    /// Where a refusal of its updates is recorded (see [`crate::refusals`]).
    pub limits: Arc<Limits>,
    /// Who its token is for, and when the token stops granting access.
    pub holder: Holder,
    pub deadline: Option<SystemTime>,
    /// Where it registers, so that revocations can end it.
    pub sessions: Arc<Sessions>,
    /// It asked to be told when its updates are stored (`?acks=1`).
    pub acks: bool,
}

/// Serves one upgraded WebSocket until it closes.
///
/// Not an `async fn`: an async fn keeps its arguments in its future for
/// its whole life, and each nested async fn they are moved into keeps
/// another copy. Everything a connection holds is moved into one
/// `Session` here, before the future exists, so an idle connection's
/// task stores each piece of its state once.
pub fn serve(
    ws: Socket,
    admitted: Admitted,
    rooms: Rooms,
    config: Arc<ConnectionConfig>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let peer = new_peer_id();
    let Admitted {
        room,
        access,
        peer_addr,
        slot,
        ip_slot,
        rate,
        limits,
        holder,
        deadline,
        sessions,
        acks,
    } = admitted;
    let span = info_span!("conn", room = %room, conn = peer, addr = ?peer_addr);
    // A wall-clock expiry as a point on the runtime's clock.
    let access_ends = deadline.map(|deadline| {
        Instant::now()
            + deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
    });
    let sub = holder.sub.clone();
    let registered = sessions.register(peer, room.clone(), holder);
    let outbox = OutboxLimits {
        frames: config.outbox_capacity,
        bytes: config.outbox_max_bytes,
    };
    let (link, inbox) = crate::room::link(outbox, ws.get_ref().shared());
    let session = Session {
        ws,
        inbox,
        peer,
        config,
        rate,
        refusals: peer_addr.map(|addr| (addr.ip(), limits)),
        access_ends,
        sub,
        registered,
        saved: acks.then(Box::default),
    };
    let joining = Joining {
        rooms,
        room,
        access,
        link,
    };
    session
        .serve(joining, (slot, ip_slot), shutdown)
        .instrument(span)
}

/// What it takes to join the room.
struct Joining {
    rooms: Rooms,
    room: RoomName,
    access: Access,
    link: PeerLink,
}

struct Session {
    ws: Socket,
    /// Frames from the room, and its request to close.
    inbox: PeerInbox,
    peer: PeerId,
    config: Arc<ConnectionConfig>,
    rate: ConnectionRate,
    /// The client's address and where refusals of its updates go.
    refusals: Option<(std::net::IpAddr, Arc<Limits>)>,
    /// When its token stops granting access: the session ends then (4401).
    access_ends: Option<Instant>,
    /// Its token's subject, for the log line when access ends.
    sub: Option<Arc<str>>,
    /// Its place among the live sessions; revocations close it through it.
    registered: Registered,
    /// Its updates waiting to be stored, with `?acks=1` (boxed: most
    /// connections do not ask, and an idle one's state is kept small).
    saved: Option<Box<SavedQueue>>,
}

impl Session {
    async fn serve(
        mut self,
        joining: Joining,
        slots: (OwnedSemaphorePermit, Option<IpSlot>),
        shutdown: CancellationToken,
    ) {
        debug!("connected");
        metrics::connection_opened();
        let closed = self.serve_room(joining, &shutdown).await;
        metrics::connection_closed(closed);
        // Its places under `--max-connections` and
        // `--max-connections-per-ip` are given back only now.
        drop(slots);
        debug!("disconnected");
    }

    /// Joins the room and serves the client in it; returns why the server
    /// closed it, if the server did.
    async fn serve_room(
        &mut self,
        joining: Joining,
        shutdown: &CancellationToken,
    ) -> Option<CloseReason> {
        let Joining {
            rooms,
            room,
            access,
            link,
        } = joining;
        let name = room.clone();
        let joined = Box::pin(rooms.join(&room, self.peer, access, link)).await;
        let room = match joined {
            Ok(handle) => handle,
            Err(refused) => {
                let reason = match refused {
                    RoomUnavailable::ShuttingDown => close::SHUTTING_DOWN,
                    RoomUnavailable::Full => close::ROOM_FULL,
                    RoomUnavailable::LoadFailed
                    | RoomUnavailable::Unloading
                    | RoomUnavailable::Deleting => close::LOAD_FAILED,
                };
                Box::pin(close_socket(&mut self.ws, reason)).await;
                return Some(reason);
            }
        };
        let writes = access == Access::ReadWrite;
        let hooks = rooms.webhooks();
        if let Some(hooks) = hooks {
            hooks.connection(true, &name, self.peer, self.sub.as_deref(), writes);
        }
        let reason = self.run(&room, shutdown).await;
        // Whatever the room sends from now on must not follow our close
        // frame onto the wire.
        self.inbox.stop_direct_writes();
        Box::pin(room.leave(self.peer)).await;
        if let Some(hooks) = hooks {
            hooks.connection(false, &name, self.peer, self.sub.as_deref(), writes);
        }
        let reason = reason?;
        debug!(code = reason.code, reason = reason.reason, "closing");
        if matches!(reason.code, 4401 | 4403) {
            // Access that ended: who, where, why (the span names the room).
            info!(
                sub = self.sub.as_deref().unwrap_or("-"),
                reason = reason.label,
                "session closed: {}",
                reason.reason
            );
            metrics::auth_refused(match reason.code {
                4401 => "expired",
                _ => "revoked",
            });
        }
        if reason.refuses_content()
            && let Some((ip, limits)) = &self.refusals
        {
            let wait = limits.refusals.record(*ip, &name);
            info!(
                code = reason.code,
                wait_ms = wait.as_millis() as u64,
                "updates refused; this address waits before reopening the room"
            );
        }
        if reason.is_sent() {
            Box::pin(close_socket(&mut self.ws, reason)).await;
        }
        Some(reason)
    }

    /// Runs until the socket ends; returns the close frame to send, if any.
    async fn run(
        &mut self,
        room: &RoomHandle,
        shutdown: &CancellationToken,
    ) -> Option<CloseReason> {
        let keepalive = self.config.keepalive_interval;
        let mut ping = interval_at(Instant::now() + keepalive, keepalive);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // Set while the client is over its rate: its socket is not read
        // (TCP pushes back on it), while frames to it keep flowing.
        let mut paused_until: Option<Instant> = None;
        let closer = self.registered.closer.clone();
        let access_ends = self.access_ends;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Some(close::SHUTTING_DOWN),
                reason = closer.closed() => return Some(reason),
                () = sleep_until(access_ends.unwrap_or_else(Instant::now)), if access_ends.is_some() => {
                    return Some(close::TOKEN_EXPIRED);
                }
                () = sleep_until(paused_until.unwrap_or_else(Instant::now)), if paused_until.is_some() => {
                    paused_until = None;
                }
                next = self.inbox.next() => {
                    // Boxed, like the other handlers: the state of a write
                    // lives on the heap only while a write is under way,
                    // not in every idle connection's future.
                    let written = match next {
                        Next::Frame(frame) => Box::pin(self.write_frames(frame)).await,
                        Next::Flush => Box::pin(self.step(Step::Flush)).await,
                        Next::Close(reason) => return Some(reason),
                        Next::RoomGone => return None,
                    };
                    match written {
                        Ok(()) => {}
                        Err(WriteError::TimedOut) => {
                            debug!("write timed out; dropping the socket");
                            return Some(close::WRITE_TIMEOUT);
                        }
                        Err(WriteError::Failed(e)) => {
                            debug!(error = %e, "write failed");
                            Box::pin(self.take_what_arrived(room)).await;
                            return None;
                        }
                    }
                    self.inbox.written();
                }
                Some(message) = next_saved(&mut self.saved), if self.saved.as_ref().is_some_and(|s| !s.is_empty()) => {
                    match Box::pin(self.write_frames(message)).await {
                        Ok(()) => {}
                        Err(WriteError::TimedOut) => return Some(close::WRITE_TIMEOUT),
                        Err(WriteError::Failed(e)) => {
                            debug!(error = %e, "write failed");
                            Box::pin(self.take_what_arrived(room)).await;
                            return None;
                        }
                    }
                }
                incoming = self.ws.next(), if paused_until.is_none() => {
                    last_heard = Instant::now();
                    if let Flow::End(reason) = Box::pin(self.on_incoming(room, incoming, &mut paused_until)).await {
                        return reason;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > keepalive * 2 {
                        debug!("no sign of life within the keepalive window");
                        return Some(close::KEEPALIVE_TIMEOUT);
                    }
                    match Box::pin(timeout(self.config.write_timeout, self.ws.send(Message::Ping(Bytes::new())))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            Box::pin(self.take_what_arrived(room)).await;
                            return None;
                        }
                        Err(_) => return Some(close::WRITE_TIMEOUT),
                    }
                }
            }
        }
    }

    /// A write failed: the client is gone (it reset the connection, say by
    /// closing with our frames unread). What it sent before it went may
    /// still be in the socket's receive buffer, and an edit typed just
    /// before closing a tab can be among it: pass that to the room, or it
    /// is lost. The reset socket reads to its end at once; the deadline
    /// only guards against a write that failed on a socket still open.
    /// A client past its rate is not read further.
    async fn take_what_arrived(&mut self, room: &RoomHandle) {
        let deadline = Instant::now() + CLOSE_HANDSHAKE_TIMEOUT;
        let mut paused_until = None;
        while paused_until.is_none() {
            let Ok(item) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return;
            };
            if let Flow::End(_) = self.on_incoming(room, item, &mut paused_until).await {
                return;
            }
        }
    }

    /// Handles what the client sent: `first`, and every further message
    /// already read off the socket, passed to the room in one command. A
    /// client that types fast (or replays offline edits) costs the room one
    /// wakeup and its peers one merged update per burst, not one per
    /// keystroke.
    async fn on_incoming(
        &mut self,
        room: &RoomHandle,
        first: Option<Result<Message, tungstenite::Error>>,
        paused_until: &mut Option<Instant>,
    ) -> Flow {
        let received_at = Instant::now();
        if self.access_ends.is_some_and(|ends| received_at >= ends) {
            // Nothing that arrives after the token expired is applied.
            return Flow::End(Some(close::TOKEN_EXPIRED));
        }
        let mut batch = Vec::new();
        let mut frames = 0;
        let mut bytes = 0;
        let mut item = first;
        let flow = loop {
            let message = match item {
                None => break Flow::End(None),
                Some(Ok(message)) => message,
                Some(Err(e)) if is_too_big(&e) => {
                    warn!(error = %e, "frame too large");
                    break Flow::End(Some(close::MESSAGE_TOO_BIG));
                }
                Some(Err(e)) if is_too_fragmented(&e) => {
                    warn!(error = %e, "message in too many frames; closing");
                    break Flow::End(Some(close::TOO_FRAGMENTED));
                }
                Some(Err(e)) => {
                    debug!(error = %e, "read failed");
                    break Flow::End(None);
                }
            };
            if let Err(reason) = admit_read(&mut self.ws, &mut self.rate, &message, paused_until) {
                break Flow::End(Some(reason));
            }
            bytes += message.len();
            frames += 1;
            if message.is_close() {
                // tungstenite answers with its close frame on the next
                // read or write; the room's frames must not follow it.
                self.inbox.stop_direct_writes();
            }
            let rules = protocol::FrameRules {
                subdocuments: self.config.subdocuments,
                awareness: self.config.awareness,
            };
            match parse_message(message, rules) {
                Ok(messages) => batch.extend(messages),
                Err(reason) => break Flow::End(Some(reason)),
            }
            if paused_until.is_some() || frames >= MAX_FRAMES_PER_BURST || bytes >= MAX_BURST_BYTES
            {
                break Flow::Continue;
            }
            item = match self.ws.next().now_or_never() {
                Some(next) => next,
                None => break Flow::Continue,
            };
        };
        // What came before a bad frame or the end of the stream still
        // counts, as it would have frame by frame.
        if !batch.is_empty() {
            if self.saved.as_ref().is_some_and(|saved| saved.is_full()) {
                warn!("too many updates waiting for storage (?acks=1); closing");
                return Flow::End(Some(close::STORAGE_BACKLOG));
            }
            let stored = self.saved.as_mut().and_then(|saved| saved.expect(&batch));
            if !room
                .send_frame_then(self.peer, batch, received_at, stored)
                .await
            {
                return Flow::End(Some(close::ROOM_FAILED));
            }
        }
        flow
    }

    /// Writes `first` and whatever else is already queued, then flushes
    /// once: a backed-up client costs one syscall per batch, not per frame.
    /// Each write step has its own deadline (`write_timeout`), so a large
    /// document streams to a slow but live client instead of timing out.
    async fn write_frames(&mut self, first: Bytes) -> Result<(), WriteError> {
        let mut sent = metrics::SentFrames::default();
        let result = self.write_batch(first, &mut sent).await;
        sent.record();
        result
    }

    async fn write_batch(
        &mut self,
        first: Bytes,
        sent: &mut metrics::SentFrames,
    ) -> Result<(), WriteError> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(frame) = next.take() {
            sent.add(&frame);
            if frame.len() > MAX_DIRECT_FRAME {
                self.write_large(frame).await?;
            } else {
                self.step(Step::Feed(Message::Binary(frame))).await?;
            }
            written += 1;
            if written < MAX_FRAMES_PER_FLUSH {
                next = match self.inbox.try_next() {
                    Some(Next::Frame(frame)) => Some(frame),
                    // Left for the session loop to see.
                    _ => None,
                };
            }
        }
        self.step(Step::Flush).await
    }

    /// A large frame (a big document's SyncStep2) goes out as one message
    /// in fragments, each written before the next, straight from the
    /// frame's bytes ([`crate::shared_socket::SocketIo::write_message`]):
    /// through tungstenite, each would be copied into a write buffer that
    /// then stays as large as the largest fragment for the connection's
    /// life (measured: 45 KiB more per idle client after a 40 KB document,
    /// 70 KiB after 1 MB). A thousand clients joining a 5 MB room never
    /// hold a 5 MB copy each either way.
    async fn write_large(&mut self, frame: Bytes) -> Result<(), WriteError> {
        self.step(Step::Flush).await?;
        match self
            .ws
            .get_mut()
            .socket_mut()
            .write_message(&frame, self.config.write_timeout)
            .await
        {
            Ok(()) => Ok(()),
            Err(WriteFailed::Io(e)) => Err(WriteError::Failed(e.into())),
            Err(WriteFailed::TimedOut) => Err(WriteError::TimedOut),
        }
    }

    async fn step(&mut self, step: Step) -> Result<(), WriteError> {
        let operation = async {
            match step {
                Step::Feed(message) => self.ws.feed(message).await,
                Step::Flush => self.ws.flush().await,
            }
        };
        match timeout(self.config.write_timeout, operation).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WriteError::Failed(e)),
            Err(_) => Err(WriteError::TimedOut),
        }
    }
}

/// Counts a message just read (and the wire frames it came in) against
/// the connection's rate: over it, reading pauses until `paused_until`
/// (TCP pushes back on the client); over it for too long, the connection
/// closes.
///
/// # Errors
/// [`close::RATE_LIMITED`] when the connection must close.
pub(crate) fn admit_read(
    ws: &mut Socket,
    rate: &mut ConnectionRate,
    message: &Message,
    paused_until: &mut Option<Instant>,
) -> Result<(), CloseReason> {
    let wire_frames = ws.get_mut().take_frames().max(1);
    match rate.admit(wire_frames, message.len()) {
        Admission::Go => Ok(()),
        Admission::Pause(wait) => {
            metrics::rate_limited("connection_paused");
            *paused_until = Some(Instant::now() + wait);
            Ok(())
        }
        Admission::Close => {
            warn!("over its rate limit for too long; closing");
            metrics::rate_limited("connection_closed");
            Err(close::RATE_LIMITED)
        }
    }
}

/// The next "saved" message to send (`None` for a refused batch).
async fn next_saved(saved: &mut Option<Box<SavedQueue>>) -> Option<Bytes> {
    saved.as_mut()?.next().await
}

/// Why a write to the client did not complete.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// One step took longer than `write_timeout`: the client stopped
    /// reading. Counted as a close of its own ([`close::WRITE_TIMEOUT`]).
    #[error("write timed out")]
    TimedOut,
    /// The socket failed: the client is gone.
    #[error(transparent)]
    Failed(tungstenite::Error),
}

enum Step {
    Feed(Message),
    Flush,
}

/// Whether a session goes on after handling input.
enum Flow {
    Continue,
    /// The session ends, with this close frame if any.
    End(Option<CloseReason>),
}

/// Most frames already read off a socket that go to the room in one
/// command, and most bytes: enough to batch a burst of keystrokes, few
/// enough that merging them for the other peers stays cheap.
const MAX_FRAMES_PER_BURST: usize = 64;
const MAX_BURST_BYTES: usize = 64 * 1024;

/// One message from the client as what the room must handle; the reason
/// to close when it is not acceptable.
pub(crate) fn parse_message(
    message: Message,
    rules: protocol::FrameRules,
) -> Result<Vec<protocol::ClientMessage>, CloseReason> {
    match message {
        Message::Binary(frame) => match protocol::parse_frame_with(&frame, rules) {
            Ok(messages) => {
                metrics::message_received(&frame);
                Ok(messages)
            }
            Err(e @ protocol::ProtocolError::Subdocument { .. }) => {
                warn!(error = %e, "an update creates a subdocument, which this server refuses (--subdocuments refuse); closing");
                Err(close::SUBDOCUMENTS_REFUSED)
            }
            Err(protocol::ProtocolError::Awareness { source, .. }) => {
                warn!(error = %source, cause = ?std::error::Error::source(&source), "awareness state refused; closing");
                Err(match source {
                    StateError::TooLarge { .. } => close::AWARENESS_TOO_LARGE,
                    StateError::TooDeep { .. } | StateError::NotJson { .. } => close::BAD_AWARENESS,
                })
            }
            Err(e) => {
                warn!(error = %e, cause = ?std::error::Error::source(&e), len = frame.len(), "protocol error");
                Err(close::PROTOCOL_ERROR)
            }
        },
        Message::Text(_) => {
            warn!("text frame received; y-websocket speaks binary");
            Err(close::TEXT_FRAME)
        }
        // Ping is answered by the WebSocket layer, pong only proves life,
        // close is answered by the WebSocket layer and ends the stream.
        _ => Ok(Vec::new()),
    }
}

/// Sends a close frame, half-closes, and reads (discarding) until the
/// client closes too or a short deadline passes. Dropping a socket with
/// unread client data in it makes the kernel send a reset, which can
/// destroy our close frame before the client reads it: a client refused
/// for an oversized frame would see 1006 instead of 1009.
pub(crate) async fn close_socket(ws: &mut Socket, reason: CloseReason) {
    let handshake = async {
        let frame = CloseFrame {
            code: CloseCode::from(reason.code),
            reason: reason.reason.into(),
        };
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            // The close frame may still be buffered in tungstenite;
            // nothing more can be written through it.
            return;
        }
        // The client answers with its own close frame; the stream ends.
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, handshake).await;
    // Whatever the WebSocket layer could not parse (the rest of an
    // oversized frame) is still in the socket: drain it below tungstenite.
    let raw = ws.get_mut();
    let _ = raw.shutdown().await;
    let drain = async {
        // On the heap: an array here would be part of every connection's
        // future, for its whole life.
        let mut scratch = vec![0u8; 8192];
        while matches!(raw.read(&mut scratch).await, Ok(n) if n > 0) {}
    };
    let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
}

/// Whether a read error is tungstenite refusing a frame over the size limit.
pub(crate) fn is_too_big(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Capacity(_))
}

/// Whether a read error is [`crate::frames`] refusing a message of too
/// many fragments.
pub(crate) fn is_too_fragmented(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e)
        if e.get_ref().is_some_and(|inner| inner.is::<crate::frames::TooManyFragments>()))
}
