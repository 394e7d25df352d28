//! A multiplexed socket: reads the providers' messages, attaches and
//! detaches their documents, passes each document's messages to its room,
//! and writes what the documents' tasks hand it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crdt_hub_core::hocuspocus::{self, Incoming, ProviderMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::error::Elapsed;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{Instrument, debug, info_span, warn};

mod attach;

use super::document::{Ack, Attached, Out};
use crate::app::App;
use crate::close::{self, CloseReason};
use crate::connection::{
    CLOSE_HANDSHAKE_TIMEOUT, MAX_FRAMES_PER_FLUSH, Socket, admit_read, close_socket, is_too_big,
    is_too_fragmented, new_peer_id, parse_message,
};
use crate::ip_connections::IpSlot;
use crate::limits::ConnectionRate;
use crate::room::Access;
use crate::shared_socket::{MAX_DIRECT_FRAME, WriteFailed};
use crate::{metrics, protocol};

/// A multiplexed upgrade that passed the socket-wide checks.
pub struct Multiplexed {
    pub peer_addr: Option<SocketAddr>,
    /// Its place under `--max-connections`, given back when it closes.
    pub slot: OwnedSemaphorePermit,
    /// Its socket's place under `--max-connections-per-ip`.
    pub ip_slot: Option<IpSlot>,
}

/// Frames waiting for the socket's writer, from all its documents: a
/// document whose frames do not fit waits, its room's queue for it fills,
/// and the room closes it as a slow consumer (never a silent drop).
const OUT_CAPACITY: usize = 256;

/// Addresses refused or detached on one socket that are remembered
/// (their late messages are ignored rather than held for a token).
const MAX_ENDED: usize = 1024;

/// What a socket may send for documents whose token has not come yet (a
/// v2 provider sends its sync step 1 first): held, then handled once the
/// token is in, dropped if it is refused. Past either bound the socket
/// closes (1008).
const MAX_HELD_MESSAGES: usize = 256;
const MAX_HELD_BYTES: usize = 1 << 20;

/// How long a document's messages wait for its token before the socket
/// is closed (4401): a provider sends its token right after connecting.
const TOKEN_WAIT: Duration = Duration::from_secs(10);

/// Messages for one document whose token has not come.
struct Held {
    since: Instant,
    /// Each with its size on the wire.
    messages: Vec<(ProviderMessage, usize)>,
}

/// Serves one multiplexed socket until it closes.
pub fn serve(
    ws: Socket,
    admitted: Multiplexed,
    app: App,
) -> impl Future<Output = ()> + Send + 'static {
    let span = info_span!("hocuspocus", conn = new_peer_id(), addr = ?admitted.peer_addr);
    let (out, outgoing) = mpsc::channel(OUT_CAPACITY);
    let session = Session {
        ws,
        rate: app.limits.for_connection(),
        app,
        peer_addr: admitted.peer_addr,
        documents: HashMap::new(),
        ended: HashSet::new(),
        held: HashMap::new(),
        held_messages: 0,
        held_bytes: 0,
        out,
        outgoing,
    };
    async move {
        metrics::connection_opened();
        let closed = session.run().await;
        metrics::connection_closed(closed);
        drop((admitted.slot, admitted.ip_slot));
    }
    .instrument(span)
}

struct Session {
    ws: Socket,
    app: App,
    rate: ConnectionRate,
    peer_addr: Option<SocketAddr>,
    /// Attached documents, by address.
    documents: HashMap<String, Attached>,
    /// Addresses whose token was refused, or whose provider detached: a
    /// message or two (awareness) may still come; they are ignored.
    ended: HashSet<String>,
    /// Messages for documents whose token is awaited, by address.
    held: HashMap<String, Held>,
    held_messages: usize,
    held_bytes: usize,
    /// Given to each document's task.
    out: mpsc::Sender<Out>,
    outgoing: mpsc::Receiver<Out>,
}

/// Whether the session goes on; if not, the close frame to send, if any
/// (none when the socket already failed).
type Flow = Result<(), Option<CloseReason>>;

impl Session {
    async fn run(mut self) -> Option<CloseReason> {
        let reason = self.serve().await;
        if reason.is_none() {
            Box::pin(self.take_what_arrived()).await;
        }
        let documents: Vec<Attached> = self.documents.drain().map(|(_, d)| d).collect();
        for document in documents {
            self.connection_event(false, &document);
            document.detach().await;
        }
        let reason = reason?;
        debug!(code = reason.code, reason = reason.reason, "closing");
        if reason.is_sent() {
            close_socket(&mut self.ws, reason).await;
        }
        Some(reason)
    }

    /// The socket failed (the client reset it, say by closing with our
    /// frames unread): what it sent before it went may still be in the
    /// receive buffer, an edit typed just before a tab closed among it.
    /// Take it, as the y-websocket connection does; the reset socket reads
    /// to its end at once, the deadline only guards a half-open one.
    async fn take_what_arrived(&mut self) {
        let deadline = Instant::now() + CLOSE_HANDSHAKE_TIMEOUT;
        let mut paused_until = None;
        while paused_until.is_none() {
            let Ok(item) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return;
            };
            if item.is_none() {
                return;
            }
            // A write failing again (an answer to a token) ends nothing
            // here: the next message may be that document's edit.
            if let Err(Some(_)) = self.on_incoming(item, &mut paused_until).await {
                return;
            }
        }
    }

    /// Runs until the socket ends; returns the close frame to send, if any.
    async fn serve(&mut self) -> Option<CloseReason> {
        let config = self.app.connection.clone();
        let keepalive = config.keepalive_interval;
        let mut ping = interval_at(Instant::now() + keepalive, keepalive);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut paused_until: Option<Instant> = None;
        let shutdown = self.app.shutdown.clone();
        loop {
            let access_ends = self.documents.values().filter_map(|d| d.access_ends).min();
            let token_overdue = self.held.values().map(|h| h.since + TOKEN_WAIT).min();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Some(close::SHUTTING_DOWN),
                () = sleep_until(token_overdue.unwrap_or_else(Instant::now)), if token_overdue.is_some() => {
                    warn!(documents = self.held.len(), "messages for a document whose token never came; closing");
                    return Some(close::NOT_AUTHENTICATED);
                }
                () = sleep_until(access_ends.unwrap_or_else(Instant::now)), if access_ends.is_some() => {
                    return Some(close::TOKEN_EXPIRED);
                }
                () = sleep_until(paused_until.unwrap_or_else(Instant::now)), if paused_until.is_some() => {
                    paused_until = None;
                }
                Some(out) = self.outgoing.recv() => {
                    match self.write(out).await {
                        Ok(()) => {}
                        Err(reason) => return reason,
                    }
                }
                incoming = self.ws.next(), if paused_until.is_none() => {
                    last_heard = Instant::now();
                    if let Err(reason) = self.on_incoming(incoming, &mut paused_until).await {
                        return reason;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > keepalive * 2 {
                        return Some(close::KEEPALIVE_TIMEOUT);
                    }
                    match timeout(config.write_timeout, self.ws.send(Message::Ping(Bytes::new()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return None,
                        Err(_) => return Some(close::WRITE_TIMEOUT),
                    }
                }
            }
        }
    }

    /// Writes `first` and whatever else is waiting, then flushes once.
    /// `Err` ends the session (with a close frame if `Some`).
    async fn write(&mut self, first: Out) -> Flow {
        let write_timeout = self.app.connection.write_timeout;
        let mut next = Some(first);
        let mut written = 0;
        let mut marks = Vec::new();
        while let Some(out) = next.take() {
            let frame = match out {
                Out::Frame(frame, mark) => {
                    marks.extend(mark);
                    frame
                }
                // The flush below writes the tail out.
                Out::Flush => {
                    next = self.outgoing.try_recv().ok();
                    continue;
                }
                Out::Close(reason) => return Err(Some(reason)),
            };
            self.write_frame(frame).await?;
            written += 1;
            if written < MAX_FRAMES_PER_FLUSH {
                next = self.outgoing.try_recv().ok();
            }
        }
        write_outcome(timeout(write_timeout, self.ws.flush()).await)?;
        // In order: a document's later frames keep it from direct writes
        // until they are written too.
        for mark in marks {
            mark.written();
        }
        Ok(())
    }

    /// Feeds one frame to the WebSocket. A big one (a document's sync) goes
    /// straight from its bytes to the socket (or to rustls), in fragments,
    /// behind what tungstenite holds: through tungstenite, its buffer would
    /// keep the whole frame's size for the connection's life.
    async fn write_frame(&mut self, frame: Bytes) -> Flow {
        let write_timeout = self.app.connection.write_timeout;
        if frame.len() <= MAX_DIRECT_FRAME {
            return write_outcome(
                timeout(write_timeout, self.ws.feed(Message::Binary(frame))).await,
            );
        }
        write_outcome(timeout(write_timeout, self.ws.flush()).await)?;
        match self
            .ws
            .get_mut()
            .socket_mut()
            .write_message(&frame, write_timeout)
            .await
        {
            Ok(()) => Ok(()),
            Err(WriteFailed::Io(e)) => {
                debug!(error = %e, "write failed");
                Err(None)
            }
            Err(WriteFailed::TimedOut) => Err(Some(close::WRITE_TIMEOUT)),
        }
    }

    /// Writes one message of the session's own (auth answers), ahead of
    /// whatever the documents have queued.
    async fn send_now(&mut self, frame: Bytes) -> Flow {
        write_outcome(
            timeout(
                self.app.connection.write_timeout,
                self.ws.send(Message::Binary(frame)),
            )
            .await,
        )
    }

    async fn on_incoming(
        &mut self,
        item: Option<Result<Message, tungstenite::Error>>,
        paused_until: &mut Option<Instant>,
    ) -> Flow {
        let message = match item {
            None => return Err(None),
            Some(Ok(message)) => message,
            Some(Err(e)) if is_too_big(&e) => return Err(Some(close::MESSAGE_TOO_BIG)),
            Some(Err(e)) if is_too_fragmented(&e) => return Err(Some(close::TOO_FRAGMENTED)),
            Some(Err(e)) => {
                debug!(error = %e, "read failed");
                return Err(None);
            }
        };
        admit_read(&mut self.ws, &mut self.rate, &message, paused_until).map_err(Some)?;
        let frame = match message {
            Message::Binary(frame) => frame,
            Message::Text(_) => {
                warn!("text frame received; the Hocuspocus protocol is binary");
                return Err(Some(close::TEXT_FRAME));
            }
            // Answered by the WebSocket layer, or proof of life.
            _ => return Ok(()),
        };
        let incoming = hocuspocus::parse(&frame).map_err(|e| {
            warn!(error = %e, len = frame.len(), "malformed Hocuspocus message; closing");
            Some(close::PROTOCOL_ERROR)
        })?;
        if !matches!(
            incoming.message,
            ProviderMessage::Auth { .. } | ProviderMessage::Close
        ) && !self.documents.contains_key(&incoming.address)
            && !self.ended.contains(&incoming.address)
        {
            if self.app.auth.is_some() {
                return self.hold(incoming, frame.len());
            }
            // Without authentication a document opens on its first
            // message, as on a Hocuspocus server without an auth hook: a
            // v2 provider with no token never sends one.
            self.attach(incoming.address.clone(), "").await?;
        }
        self.on_message(incoming).await
    }

    async fn on_message(&mut self, incoming: Incoming) -> Flow {
        let Incoming { address, message } = incoming;
        match message {
            ProviderMessage::Auth { token } => self.attach(address, &token).await,
            ProviderMessage::Room(frame) => self.pass_to_room(&address, frame).await,
            ProviderMessage::Close => {
                if let Some(document) = self.documents.remove(&address) {
                    debug!(address, "provider detached");
                    self.connection_event(false, &document);
                    document.detach().await;
                    if self.ended.len() < MAX_ENDED {
                        self.ended.insert(address);
                    }
                }
                Ok(())
            }
            ProviderMessage::Stateless(payload) => {
                let Some(document) = self.documents.get(&address) else {
                    return Ok(()); // refused or detached
                };
                if document.room.stateless(document.peer, payload).await {
                    Ok(())
                } else {
                    Err(Some(close::ROOM_FAILED))
                }
            }
            ProviderMessage::Ignored { kind } => {
                debug!(address, kind, "message type ignored");
                Ok(())
            }
        }
    }

    async fn pass_to_room(&mut self, address: &str, frame: Bytes) -> Flow {
        let Some(document) = self.documents.get(address) else {
            // Refused, or detached: its provider has not heard yet.
            return Ok(());
        };
        let rules = protocol::FrameRules {
            subdocuments: self.app.connection.subdocuments,
            awareness: self.app.connection.awareness,
        };
        let mut messages = parse_message(Message::Binary(frame), rules).map_err(Some)?;
        let received_at = Instant::now();
        let updates = messages
            .iter()
            .filter(|m| matches!(m, protocol::ClientMessage::DocUpdate(_)))
            .count();
        if document.access == Access::ReadOnly && updates > 0 {
            // Refused here, as the room would: an update that adds nothing
            // (the sync step 2 of a provider with no edits of its own) is
            // answered as saved, anything else as refused.
            let mut saved = Vec::with_capacity(updates);
            messages.retain(|m| match m {
                protocol::ClientMessage::DocUpdate(update) => {
                    saved.push(update.update.is_empty());
                    false
                }
                _ => true,
            });
            document
                .acks
                .try_send(Ack::Now(saved))
                .map_err(|_| Some(acks_backlog()))?;
            if messages.is_empty() {
                return Ok(());
            }
        }
        let stored = if document.access == Access::ReadWrite && updates > 0 {
            let (tx, rx) = oneshot::channel();
            document
                .acks
                .try_send(Ack::Stored {
                    updates,
                    stored: rx,
                })
                .map_err(|_| Some(acks_backlog()))?;
            Some(tx)
        } else {
            None
        };
        if document
            .room
            .send_frame_then(document.peer, messages, received_at, stored)
            .await
        {
            Ok(())
        } else {
            Err(Some(close::ROOM_FAILED))
        }
    }
}

/// What became of one write to the client given `write_timeout`.
fn write_outcome(result: Result<Result<(), tungstenite::Error>, Elapsed>) -> Flow {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "write failed");
            Err(None)
        }
        Err(_) => Err(Some(close::WRITE_TIMEOUT)),
    }
}

/// Too many of a document's updates wait for storage: the provider
/// reconnects and resyncs once storage keeps up.
fn acks_backlog() -> CloseReason {
    warn!("too many updates waiting for storage on one document; closing");
    close::STORAGE_BACKLOG
}

/// A wall-clock time as a point on the runtime's clock.
fn instant_of(deadline: SystemTime) -> Instant {
    Instant::now()
        + deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
}
