//! A client's plain-TCP socket, shared by its connection task and its room.
//!
//! Delivering a keystroke to a peer used to take a hop: the room queued
//! the frame and woke the peer's connection task, which wrote it. At tens
//! of thousands of deliveries a second that wake-up (scheduling, the
//! connection's select loop, tungstenite's buffering, a worker thread
//! unparked) cost as much CPU as the `write` itself. The room now writes a
//! small frame straight to the socket when nothing is pending for the peer.
//! Everything else — reads, control frames, large frames, and every frame
//! once the socket pushes back — still goes through the connection's
//! tungstenite stream, whose writes pass through here under the same lock.
//!
//! Frames must never interleave on the wire. A write the kernel cuts short
//! therefore never leaves a partial frame with its writer: the tail is kept
//! here (`unsent`) and written before anything else by whoever writes
//! next. The order of whole frames is the peer link's business
//! ([`crate::room::PeerLink`] writes directly only while the connection
//! holds no frame of its own).
//!
//! TLS connections do not share their socket (their bytes are encrypted in
//! order by one writer); they keep the hop. Their large frames, too, go
//! past tungstenite ([`SocketIo::write_message`]).
//!
//! Reads stay with the connection alone, through tokio's own read half: a
//! read that comes back short of the buffer tells tokio the socket is
//! drained, so a message costs one `recv`, not a second one that only
//! says "would block".

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Largest frame the room writes itself. Bigger ones (a document's sync
/// step 2) are rare and go through the connection, which fragments them.
pub const MAX_DIRECT_FRAME: usize = 16 * 1024;

/// Largest fragment of a message bigger than [`MAX_DIRECT_FRAME`]: the
/// most one write's tail can leave in `unsent` (and for so long only).
pub const FRAGMENT_SIZE: usize = 64 * 1024;

/// Why [`SocketIo::write_message`] did not finish.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailed {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A fragment waited longer than allowed: the client stopped reading.
    #[error("a fragment was not taken in time")]
    TimedOut,
}

/// Buffer capacity kept once `unsent` has drained; more is given back.
const KEPT_UNSENT_CAPACITY: usize = 1024;

/// The I/O under a connection's WebSocket.
pub enum SocketIo {
    /// Plain TCP, writable by the room too.
    Shared {
        read: OwnedReadHalf,
        socket: Arc<SharedSocket>,
    },
    /// Anything else hyper upgraded (TLS): the connection's alone.
    Upgraded(TokioIo<Upgraded>),
}

impl SocketIo {
    /// Takes the socket out of hyper's upgrade; returns it with the bytes
    /// hyper had already read past the handshake.
    ///
    /// With `rehome`, a plain TCP socket is registered again with the
    /// runtime this runs on (a room thread's): tokio reports a socket's
    /// readiness through the runtime it was registered with, and a socket
    /// whose every read woke another thread's runtime would undo what
    /// running the connection with its room saves.
    ///
    /// # Errors
    /// When the socket cannot be moved (out of descriptors, say).
    pub fn from_upgraded(upgraded: Upgraded, rehome: bool) -> io::Result<(Self, Vec<u8>)> {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let mut stream = parts.io.into_inner();
                if rehome {
                    stream = TcpStream::from_std(stream.into_std()?)?;
                }
                let (read, socket) = SharedSocket::split(stream);
                Ok((
                    Self::Shared {
                        read,
                        socket: Arc::new(socket),
                    },
                    parts.read_buf.to_vec(),
                ))
            }
            Err(upgraded) => Ok((Self::Upgraded(TokioIo::new(upgraded)), Vec::new())),
        }
    }

    /// The socket, if the room may write to it.
    pub fn shared(&self) -> Option<Arc<SharedSocket>> {
        match self {
            Self::Shared { socket, .. } => Some(socket.clone()),
            Self::Upgraded(_) => None,
        }
    }

    /// Writes `message` as one binary WebSocket message in fragments of at
    /// most [`FRAGMENT_SIZE`], each taken within `each`, past tungstenite,
    /// whose write buffer keeps the size of the largest frame it ever sent
    /// for the connection's life. The caller flushes tungstenite first.
    ///
    /// Over TLS each fragment goes to rustls, which encrypts it into
    /// records it frees once they are written: nothing of the message's
    /// size stays either (a Hocuspocus client over `wss://` kept its whole
    /// document).
    ///
    /// # Errors
    /// When the socket fails or a fragment waits longer than `each`.
    pub async fn write_message(
        &mut self,
        message: &[u8],
        each: std::time::Duration,
    ) -> Result<(), WriteFailed> {
        let io = match self {
            Self::Shared { socket, .. } => return socket.write_message(message, each).await,
            Self::Upgraded(io) => io,
        };
        for (first, fin, fragment) in fragments(message) {
            let mut buf = [0u8; MAX_HEADER];
            let header = frame_header(first, fin, fragment.len(), &mut buf);
            let write = async {
                io.write_all(header).await?;
                io.write_all(fragment).await?;
                io.flush().await
            };
            tokio::time::timeout(each, write)
                .await
                .map_err(|_| WriteFailed::TimedOut)??;
        }
        Ok(())
    }
}

/// `message` cut into fragments of at most [`FRAGMENT_SIZE`]: (first, fin,
/// bytes) each. An empty message is one empty final fragment.
fn fragments(message: &[u8]) -> impl Iterator<Item = (bool, bool, &[u8])> {
    let count = message.len().div_ceil(FRAGMENT_SIZE).max(1);
    (0..count).map(move |i| {
        let end = message.len().min((i + 1) * FRAGMENT_SIZE);
        (i == 0, i + 1 == count, &message[i * FRAGMENT_SIZE..end])
    })
}

/// A TCP socket's sending side, whose writes are serialised by one lock.
#[derive(Debug)]
pub struct SharedSocket {
    /// Dropping it shuts the sending side down: that happens once the
    /// connection and the room have both let go, when the socket is done.
    stream: OwnedWriteHalf,
    /// Bytes handed to the socket that the kernel has not taken yet: the
    /// tail of a write it cut short. Written before anything else.
    unsent: Mutex<Vec<u8>>,
}

/// What became of frames offered with [`SharedSocket::try_write_frames`].
#[derive(Debug, PartialEq, Eq)]
pub struct DirectWrite {
    /// How many of the frames, from the first, the socket took (the last
    /// of them perhaps only in part: see `started`).
    pub taken: usize,
    /// The last frame taken is only partly in the kernel; its tail waits
    /// in `unsent` and someone must flush the socket.
    pub started: bool,
}

/// Frames per vectored write.
const FRAMES_PER_WRITE: usize = 32;

/// Slices per frame: header, prefix (a Hocuspocus address) and payload.
const SLICES_PER_FRAME: usize = 3;

impl SharedSocket {
    /// Splits `stream` into the connection's read half and the shared
    /// sending side.
    pub(crate) fn split(stream: TcpStream) -> (OwnedReadHalf, Self) {
        let (read, write) = stream.into_split();
        let socket = Self {
            stream: write,
            unsent: Mutex::new(Vec::new()),
        };
        (read, socket)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `frames` as binary WebSocket messages (a server's frames are
    /// not masked), each message `prefix` then the frame (a Hocuspocus
    /// document's name; empty for y-websocket), as many as the kernel takes
    /// now, in one `writev` per 32 frames. Writes nothing while bytes are
    /// pending. Never waits; a failed socket takes nothing (the
    /// connection's next write reports it).
    pub fn try_write_frames(&self, prefix: &[u8], frames: &[&Bytes]) -> DirectWrite {
        let mut unsent = self.lock();
        let mut taken = 0;
        if !unsent.is_empty() {
            return DirectWrite {
                taken,
                started: false,
            };
        }
        for chunk in frames.chunks(FRAMES_PER_WRITE) {
            let mut headers = [[0u8; MAX_HEADER]; FRAMES_PER_WRITE];
            let mut lens = [0usize; FRAMES_PER_WRITE];
            for ((frame, header), len) in chunk.iter().zip(&mut headers).zip(&mut lens) {
                *len = binary_frame_header(prefix.len() + frame.len(), header).len();
            }
            let mut slices = [IoSlice::new(&[]); SLICES_PER_FRAME * FRAMES_PER_WRITE];
            for (i, frame) in chunk.iter().enumerate() {
                let at = SLICES_PER_FRAME * i;
                slices[at] = IoSlice::new(&headers[i][..lens[i]]);
                slices[at + 1] = IoSlice::new(prefix);
                slices[at + 2] = IoSlice::new(frame);
            }
            // Would-block or a failed socket: nothing taken.
            let socket = self.stream.as_ref();
            let mut written = socket
                .try_io(Interest::WRITABLE, || {
                    socket2::SockRef::from(socket)
                        .send_vectored(&slices[..SLICES_PER_FRAME * chunk.len()])
                })
                .unwrap_or_default();
            for (i, frame) in chunk.iter().enumerate() {
                let parts = [&headers[i][..lens[i]], prefix, frame.as_ref()];
                let size: usize = parts.iter().map(|p| p.len()).sum();
                if written >= size {
                    written -= size;
                    taken += 1;
                    continue;
                }
                if written > 0 {
                    // Cut short inside this frame: keep its tail.
                    for part in parts {
                        let skip = written.min(part.len());
                        unsent.extend_from_slice(&part[skip..]);
                        written -= skip;
                    }
                    taken += 1;
                    return DirectWrite {
                        taken,
                        started: true,
                    };
                }
                return DirectWrite {
                    taken,
                    started: false,
                };
            }
        }
        DirectWrite {
            taken,
            started: false,
        }
    }

    /// Writes what is in `unsent`; ready once it is all in the kernel.
    fn poll_drain(&self, unsent: &mut Vec<u8>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !unsent.is_empty() {
            ready!(self.stream.as_ref().poll_write_ready(cx))?;
            match self.stream.try_write(unsent) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if unsent.capacity() > KEPT_UNSENT_CAPACITY {
            *unsent = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Takes all of `buf` or none of it: what the kernel does not take now
    /// is kept in `unsent`, so the caller never holds half a frame that the
    /// room's next frame could land in the middle of.
    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut unsent = self.lock();
        ready!(self.poll_drain(&mut unsent, cx))?;
        loop {
            ready!(self.stream.as_ref().poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => {
                    unsent.extend_from_slice(&buf[n..]);
                    return Poll::Ready(Ok(buf.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut unsent = self.lock();
        self.poll_drain(&mut unsent, cx)
    }

    /// Writes `message` as one binary WebSocket message, in fragments of at
    /// most [`FRAGMENT_SIZE`] written straight from its bytes, each taken
    /// by the kernel within `each` (so a big document streams to a slow but
    /// live client, and one that stopped reading times out).
    ///
    /// # Errors
    /// When the socket fails or a fragment waits longer than `each`.
    async fn write_message(
        &self,
        message: &[u8],
        each: std::time::Duration,
    ) -> Result<(), WriteFailed> {
        for (first, fin, fragment) in fragments(message) {
            tokio::time::timeout(each, self.write_fragment(first, fin, fragment))
                .await
                .map_err(|_| WriteFailed::TimedOut)??;
        }
        Ok(())
    }

    /// Writes one frame of a message the connection sends in fragments
    /// (`first`: it opens the binary message, else it continues it; `fin`:
    /// it ends it) straight from `payload`, and waits until the kernel has
    /// all of it.
    ///
    /// Why not through tungstenite: it copies what it sends into a buffer
    /// that keeps its largest size for the connection's life, so every
    /// client that once synced a big document held 40–70 KiB more while
    /// idle. Here a write the kernel cuts short keeps its tail in `unsent`
    /// only until it drains.
    ///
    /// # Errors
    /// When the socket fails.
    async fn write_fragment(&self, first: bool, fin: bool, payload: &[u8]) -> io::Result<()> {
        let mut buf = [0u8; MAX_HEADER];
        let header = frame_header(first, fin, payload.len(), &mut buf);
        std::future::poll_fn(|cx| self.poll_write_parts(cx, &[header, payload])).await?;
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Like `poll_write` for a frame in parts (header, payload), in one
    /// vectored write: takes all of them or none.
    fn poll_write_parts(&self, cx: &mut Context<'_>, parts: &[&[u8]; 2]) -> Poll<io::Result<()>> {
        let mut unsent = self.lock();
        ready!(self.poll_drain(&mut unsent, cx))?;
        let slices = parts.map(IoSlice::new);
        let socket = self.stream.as_ref();
        loop {
            ready!(socket.poll_write_ready(cx))?;
            match socket.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(socket).send_vectored(&slices)
            }) {
                Ok(mut written) => {
                    for part in parts {
                        let skip = written.min(part.len());
                        unsent.extend_from_slice(&part[skip..]);
                        written -= skip;
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        Poll::Ready(
            socket2::SockRef::from(self.stream.as_ref()).shutdown(std::net::Shutdown::Write),
        )
    }
}

/// Longest frame header: opcode byte, length byte, 64-bit length.
const MAX_HEADER: usize = 10;

/// The header of one unmasked, final, binary frame (RFC 6455 §5.2).
fn binary_frame_header(len: usize, out: &mut [u8; MAX_HEADER]) -> &[u8] {
    frame_header(true, true, len, out)
}

/// The header of one unmasked frame of a binary message: its first frame
/// (opcode binary) or a continuation, final or not (RFC 6455 §5.2, §5.4).
fn frame_header(first: bool, fin: bool, len: usize, out: &mut [u8; MAX_HEADER]) -> &[u8] {
    let opcode = if first { 0x2 } else { 0x0 };
    let fin_bit = if fin { 0x80 } else { 0 };
    out[0] = fin_bit | opcode;
    if len < 126 {
        out[1] = len as u8;
        &out[..2]
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        &out[..4]
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        &out[..10]
    }
}

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Shared { read, .. } => Pin::new(read).poll_read(cx, buf),
            Self::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Shared { socket, .. } => socket.poll_write(cx, buf),
            Self::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Shared { socket, .. } => socket.poll_flush(cx),
            Self::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Shared { socket, .. } => socket.poll_shutdown(cx),
            Self::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (OwnedReadHalf, Arc<SharedSocket>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (read, socket) = SharedSocket::split(accepted.unwrap().0);
        (read, Arc::new(socket), client.unwrap())
    }

    #[test]
    fn headers_follow_rfc_6455_length_forms() {
        let mut out = [0; 10];
        assert_eq!(binary_frame_header(5, &mut out), &[0x82, 5]);
        assert_eq!(binary_frame_header(300, &mut out), &[0x82, 126, 1, 44]);
        assert_eq!(
            binary_frame_header(70_000, &mut out),
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn fragment_headers_carry_their_opcode_and_fin() {
        let mut out = [0; 10];
        assert_eq!(frame_header(true, false, 5, &mut out), &[0x02, 5]);
        assert_eq!(frame_header(false, false, 5, &mut out), &[0x00, 5]);
        assert_eq!(frame_header(false, true, 5, &mut out), &[0x80, 5]);
    }

    /// A message bigger than the socket's buffers, in fragments written
    /// straight from its bytes, arrives whole to a WebSocket client; the
    /// tails of the writes the kernel cut short are given back after.
    #[tokio::test]
    async fn a_fragmented_message_written_directly_arrives_whole() {
        use futures_util::StreamExt;
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::{Message, protocol::Role};

        let (_read, socket, client) = pair().await;
        let message: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            match ws.next().await {
                Some(Ok(Message::Binary(got))) => got,
                other => panic!("not one binary message: {other:?}"),
            }
        });
        socket
            .write_message(&message, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let got = reader.await.unwrap();
        assert!(got[..] == message[..], "the message arrived changed");
        assert!(socket.lock().capacity() <= KEPT_UNSENT_CAPACITY);
    }

    #[tokio::test]
    async fn a_direct_frame_arrives_whole() {
        let (_read, socket, mut client) = pair().await;
        let frames = [Bytes::from_static(b"hello"), Bytes::from_static(b"yo")];
        let written = socket.try_write_frames(&[], &[&frames[0], &frames[1]]);
        assert_eq!(
            written,
            DirectWrite {
                taken: 2,
                started: false
            }
        );
        let mut got = [0u8; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x82\x05hello\x82\x02yo");
        // A Hocuspocus document's frames start with its address.
        socket.try_write_frames(b"\x01d", &[&frames[1]]);
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x82\x04\x01dyo");
    }

    /// Fills the socket until the kernel cuts a frame short, then checks
    /// that nothing more is written directly, that the connection's own
    /// write goes after the tail, and that the reader sees whole frames,
    /// each with its prefix.
    #[tokio::test]
    async fn a_frame_cut_short_is_finished_before_anything_else() {
        let (read, socket, mut client) = pair().await;
        let payload = Bytes::from(vec![7u8; 4000]);
        let prefix = b"\x03doc";
        let batch = vec![&payload; 5];
        let mut direct = 0usize;
        loop {
            let written = socket.try_write_frames(prefix, &batch);
            direct += written.taken;
            if written.taken < batch.len() {
                break;
            }
        }
        let refused = socket.try_write_frames(prefix, &[&payload]);
        assert_eq!(
            refused,
            DirectWrite {
                taken: 0,
                started: false
            }
        );
        let mut io = SocketIo::Shared {
            read,
            socket: socket.clone(),
        };
        let reader = tokio::spawn(async move {
            let mut frames = 0usize;
            let last = loop {
                let mut head = [0u8; 2];
                client.read_exact(&mut head).await.unwrap();
                assert_eq!(head[0], 0x82);
                let len = match head[1] {
                    126 => {
                        let mut ext = [0u8; 2];
                        client.read_exact(&mut ext).await.unwrap();
                        u16::from_be_bytes(ext) as usize
                    }
                    n => n as usize,
                };
                let mut body = vec![0u8; len];
                client.read_exact(&mut body).await.unwrap();
                frames += 1;
                if len != 4004 {
                    break body;
                }
                assert_eq!(&body[..4], prefix);
                assert!(body[4..].iter().all(|b| *b == 7));
            };
            (frames, last)
        });
        io.write_all(b"\x82\x03end").await.unwrap();
        io.flush().await.unwrap();
        let (frames, last) = reader.await.unwrap();
        assert_eq!(frames, direct + 1);
        assert_eq!(last, b"end");
    }
}
