//! WebSocket frames counted as they are read, below tungstenite.
//!
//! tungstenite assembles a message from its fragments before the
//! connection sees anything. A client that sends zero-length continuation
//! frames and never finishes the message cost a full core per connection
//! (red-team finding, issue 27): each frame is six bytes to send and a
//! parse to read, and neither the message rate limit nor the size limit
//! ever sees a message. So the bytes are scanned here for frame headers
//! on their way to tungstenite: a message may have at most
//! [`MAX_FRAGMENTS`] frames (past it the read fails and the connection
//! ends), and every frame, fragments included, is charged to the
//! connection's message rate ([`CountedIo::take_frames`]).
//!
//! Only headers are read (RFC 6455 §5.2); payloads are skipped, not
//! copied or unmasked.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::shared_socket::{SharedSocket, SocketIo};

/// Most frames one message may arrive in. Browsers send a message as one
/// frame; libraries that fragment use pieces of 4 KiB or more, and 1,024
/// of those carry a 4 MiB message.
pub const MAX_FRAGMENTS: u32 = 1024;

/// Why the scanner ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a message arrived in more than {MAX_FRAGMENTS} frames")]
pub struct TooManyFragments;

/// Where the scanner is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Reading a header; `have` bytes of it are in the buffer.
    Header,
    /// Skipping this many payload bytes.
    Payload(u64),
}

/// Follows frame boundaries through a byte stream.
#[derive(Debug)]
pub struct FrameScanner {
    position: Position,
    header: [u8; 14],
    have: usize,
    /// Frames of the data message being received so far.
    fragments: u32,
    /// Frames since the connection last took the count.
    frames: u32,
}

impl Default for FrameScanner {
    fn default() -> Self {
        Self {
            position: Position::Header,
            header: [0; 14],
            have: 0,
            fragments: 0,
            frames: 0,
        }
    }
}

impl FrameScanner {
    /// Follows `bytes`, the next bytes read from the client.
    ///
    /// # Errors
    /// [`TooManyFragments`] once a message has more frames than allowed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), TooManyFragments> {
        while !bytes.is_empty() {
            match self.position {
                Position::Payload(left) => {
                    let skip = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[skip..];
                    let left = left - skip as u64;
                    self.position = if left == 0 {
                        Position::Header
                    } else {
                        Position::Payload(left)
                    };
                }
                Position::Header => {
                    let take = (self.header_len().unwrap_or(2) - self.have).min(bytes.len());
                    self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                    self.have += take;
                    bytes = &bytes[take..];
                    if let Some(len) = self.header_len()
                        && self.have == len
                    {
                        self.frame_header_done()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Frames read since the last call.
    pub fn take_frames(&mut self) -> u32 {
        std::mem::take(&mut self.frames)
    }

    /// The whole header's length, once its first two bytes are in.
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let extended = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Some(2 + extended + if masked { 4 } else { 0 })
    }

    fn frame_header_done(&mut self) -> Result<(), TooManyFragments> {
        let payload = match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            len => u64::from(len),
        };
        let opcode = self.header[0] & 0x0F;
        self.frames = self.frames.saturating_add(1);
        // Control frames (0x8 and up) may come between fragments.
        if opcode < 0x8 {
            self.fragments = if opcode == 0x0 {
                self.fragments.saturating_add(1)
            } else {
                1
            };
            if self.fragments > MAX_FRAGMENTS {
                return Err(TooManyFragments);
            }
        }
        self.have = 0;
        self.position = if payload == 0 {
            Position::Header
        } else {
            Position::Payload(payload)
        };
        Ok(())
    }
}

/// A connection's socket with its incoming frames counted.
pub struct CountedIo {
    io: SocketIo,
    scanner: FrameScanner,
}

impl CountedIo {
    /// `already_read`: bytes past the handshake that hyper read, which
    /// reach tungstenite without passing through here.
    pub fn new(io: SocketIo, already_read: &[u8]) -> io::Result<Self> {
        let mut scanner = FrameScanner::default();
        scanner.feed(already_read).map_err(invalid_data)?;
        Ok(Self { io, scanner })
    }

    /// The socket, if the room may write to it.
    pub fn shared(&self) -> Option<Arc<SharedSocket>> {
        self.io.shared()
    }

    /// The socket under the scanner, to write a large message past
    /// tungstenite ([`SocketIo::write_message`]).
    pub fn socket_mut(&mut self) -> &mut SocketIo {
        &mut self.io
    }

    /// Frames read since the last call (at least the messages read).
    pub fn take_frames(&mut self) -> u32 {
        self.scanner.take_frames()
    }
}

fn invalid_data(e: TooManyFragments) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && let Err(e) = this.scanner.feed(&buf.filled()[before..])
        {
            return Poll::Ready(Err(invalid_data(e)));
        }
        polled
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header (RFC 6455 §5.2) and its payload.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn counts_frames_of_every_length_form_however_the_bytes_are_cut() {
        let mut stream = Vec::new();
        stream.extend(frame(true, 0x2, b"hello"));
        stream.extend(frame(true, 0x2, &[7; 300]));
        stream.extend(frame(true, 0x2, &[7; 70_000]));
        stream.extend(frame(true, 0x9, b"")); // a ping
        for chunk in [1, 3, 7, 4096, stream.len()] {
            let mut scanner = FrameScanner::default();
            for piece in stream.chunks(chunk) {
                scanner.feed(piece).unwrap();
            }
            assert_eq!(scanner.take_frames(), 4, "chunks of {chunk}");
            assert_eq!(scanner.position, Position::Header);
        }
    }

    #[test]
    fn a_message_of_too_many_fragments_is_refused() {
        let mut scanner = FrameScanner::default();
        scanner.feed(&frame(false, 0x2, b"")).unwrap();
        for _ in 1..MAX_FRAGMENTS {
            scanner.feed(&frame(false, 0x0, b"")).unwrap();
            // Control frames between fragments do not count as fragments.
            scanner.feed(&frame(true, 0x9, b"")).unwrap();
        }
        assert_eq!(scanner.feed(&frame(false, 0x0, b"")), Err(TooManyFragments));

        // A finished message starts the count again.
        let mut scanner = FrameScanner::default();
        for _ in 0..3 {
            scanner.feed(&frame(false, 0x2, b"a")).unwrap();
            for _ in 2..MAX_FRAGMENTS {
                scanner.feed(&frame(false, 0x0, b"b")).unwrap();
            }
            scanner.feed(&frame(true, 0x0, b"c")).unwrap();
        }
        assert_eq!(scanner.take_frames(), 3 * MAX_FRAGMENTS);
    }
}
