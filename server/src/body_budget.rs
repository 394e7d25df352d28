//! A bound on the request body bytes the server holds at once
//! (`--max-body-bytes-in-flight`), and on each body (`--max-body-size`).
//!
//! `POST /api/rooms/{room}/update` reads its whole body before decoding
//! it. Each body was bounded (64 MiB) but their sum was not: 48 concurrent
//! 63 MiB bodies took the server to 2.08 GB of RSS, 1.4 GB of it still held
//! afterwards (issue 27, item 6). Now a body is admitted only once its
//! declared length fits in a server-wide budget of bytes, reserved before
//! its first byte is read and given back when the request is done. A body
//! that does not fit waits up to [`BodyBudget::wait`] for room (a burst of
//! honest imports just queues) and is then refused with 503 and
//! `Retry-After`; its bytes are never read (a client that sent
//! `Expect: 100-continue` never even sends them).
//!
//! The length must be known before reading, so a body without
//! `Content-Length` (chunked) is refused with 411, and one larger than
//! `--max-body-size` with 413. Reserving the declared length up front,
//! rather than bytes as they arrive, keeps bodies from deadlocking each
//! other (every one half-read, none able to finish); a slow body holds its
//! reservation at most until `--http-timeout` ends the request.
//!
//! The body is read into one buffer of exactly its length: no chunk list
//! copied into a second buffer (twice the memory at the peak). A large
//! one ([`MAPPED_BODY`] and up) gets memory mapped for it alone, which goes
//! back to the system the moment the body is dropped. From the allocator,
//! it did not: glibc raises its mmap threshold to the size of each large
//! block freed, so the next bodies came from its heaps and stayed there
//! (eight 8 MiB bodies left 18 MiB behind; 48 of 63 MiB left 1.4 GB).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{Stream, TryStreamExt};
use http::{HeaderMap, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies at least this large are read into memory of their own (see the
/// module comment); smaller ones into the allocator's.
pub const MAPPED_BODY: usize = 1 << 20;

/// How long a body that does not fit waits for others to finish before it
/// gets 503: long enough to ride out a burst, short enough that the client
/// is not left hanging (it retries after `Retry-After`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("a Content-Length header is required: this endpoint does not accept chunked bodies")]
    LengthRequired,
    #[error("the body is {length} bytes, more than the {limit} this server accepts")]
    TooLarge { length: u64, limit: usize },
    #[error("the server is reading too many request bodies at once; retry later")]
    Busy,
    #[error("reading the body failed")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the body is longer than its Content-Length")]
    LongerThanDeclared,
    #[error("no memory for the body")]
    NoMemory(#[source] std::io::Error),
}

impl BodyError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Busy | Self::NoMemory(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Read(_) | Self::LongerThanDeclared => StatusCode::BAD_REQUEST,
        }
    }
}

/// The server-wide budget of request body bytes.
#[derive(Debug)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
    max_body: usize,
    wait: Duration,
    in_flight: AtomicUsize,
    /// The most ever reserved at once: what the budget let through.
    peak: AtomicUsize,
}

/// A body's reservation; given back when dropped.
#[derive(Debug)]
pub struct BodyPermit {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
    budget: Arc<BodyBudget>,
}

impl BodyBudget {
    /// At most `total` bytes of bodies at once, `max_body` per body
    /// (lowered to `total`: a larger body could never be admitted, and
    /// gets 413 rather than a 503 that retrying never cures).
    pub fn new(total: usize, max_body: usize, wait: Duration) -> Arc<Self> {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        // One reservation is at most u32::MAX permits (tokio's limit).
        let max_body = max_body
            .min(total)
            .min(usize::try_from(u32::MAX).unwrap_or(usize::MAX));
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            max_body,
            wait,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    /// The per-body limit in force.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The server-wide bound.
    pub fn total(&self) -> usize {
        self.total
    }

    /// How long a body waits for room before 503.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Bytes reserved right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The most bytes ever reserved at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Reserves room for the body `headers` announce, waiting up to
    /// [`Self::wait`].
    ///
    /// # Errors
    /// [`BodyError::LengthRequired`] without a Content-Length (or with a
    /// Transfer-Encoding), [`BodyError::TooLarge`] past the per-body
    /// limit, [`BodyError::Busy`] when no room came within the wait.
    pub async fn admit(self: &Arc<Self>, headers: &HeaderMap) -> Result<BodyPermit, BodyError> {
        let length = declared_length(headers)?;
        let too_large = || BodyError::TooLarge {
            length,
            limit: self.max_body,
        };
        let bytes = usize::try_from(length).map_err(|_| too_large())?;
        if bytes > self.max_body {
            return Err(too_large());
        }
        let permits = u32::try_from(bytes).map_err(|_| too_large())?;
        let acquire = self.permits.clone().acquire_many_owned(permits);
        let permit = match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => permit,
            // Timed out, or the semaphore was closed (it never is).
            Ok(Err(_)) | Err(_) => {
                crate::metrics::rate_limited("body_bytes_in_flight");
                return Err(BodyError::Busy);
            }
        };
        let now = self.in_flight.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        crate::metrics::body_bytes_reserved(bytes);
        Ok(BodyPermit {
            _permit: permit,
            bytes,
            budget: self.clone(),
        })
    }
}

impl BodyPermit {
    /// Bytes reserved: the body's declared length.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Reads the body into one buffer of its declared length.
    ///
    /// # Errors
    /// When the stream fails or carries more than declared.
    pub async fn read<S, B, E>(&self, stream: S) -> Result<Bytes, BodyError>
    where
        S: Stream<Item = Result<B, E>>,
        B: Buf,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut stream = std::pin::pin!(stream);
        let mut body = BodyBuffer::new(self.bytes)?;
        while let Some(mut chunk) = stream
            .try_next()
            .await
            .map_err(|e| BodyError::Read(e.into()))?
        {
            while chunk.has_remaining() {
                let piece = chunk.chunk();
                body.push(piece)?;
                let n = piece.len();
                chunk.advance(n);
            }
        }
        Ok(body.into_bytes())
    }
}

/// Where a body is read to: a `Vec` when small, its own mapping when large.
enum BodyBuffer {
    Heap(Vec<u8>),
    Mapped {
        map: memmap2::MmapMut,
        filled: usize,
    },
}

impl BodyBuffer {
    fn new(capacity: usize) -> Result<Self, BodyError> {
        if capacity < MAPPED_BODY {
            return Ok(Self::Heap(Vec::with_capacity(capacity)));
        }
        let map = memmap2::MmapMut::map_anon(capacity).map_err(BodyError::NoMemory)?;
        Ok(Self::Mapped { map, filled: 0 })
    }

    fn push(&mut self, piece: &[u8]) -> Result<(), BodyError> {
        match self {
            Self::Heap(body) => {
                if body.len() + piece.len() > body.capacity() {
                    return Err(BodyError::LongerThanDeclared);
                }
                body.extend_from_slice(piece);
            }
            Self::Mapped { map, filled } => {
                let end = *filled + piece.len();
                map.get_mut(*filled..end)
                    .ok_or(BodyError::LongerThanDeclared)?
                    .copy_from_slice(piece);
                *filled = end;
            }
        }
        Ok(())
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Self::Heap(body) => Bytes::from(body),
            Self::Mapped { map, filled } => Bytes::from_owner(map).slice(..filled),
        }
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.budget
            .in_flight
            .fetch_sub(self.bytes, Ordering::Relaxed);
        crate::metrics::body_bytes_released(self.bytes);
    }
}

/// The length a request announces for its body.
///
/// # Errors
/// [`BodyError::LengthRequired`] when it has no usable Content-Length or
/// has a Transfer-Encoding (chunked: the length is unknown until the end).
fn declared_length(headers: &HeaderMap) -> Result<u64, BodyError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(BodyError::LengthRequired);
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or(BodyError::LengthRequired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_length(length: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, length.into());
        headers
    }

    #[tokio::test]
    async fn bodies_wait_for_room_then_get_busy() {
        let budget = BodyBudget::new(100, 100, Duration::from_millis(50));
        let first = budget.admit(&with_length(60)).await.unwrap();
        assert!(matches!(
            budget.admit(&with_length(60)).await,
            Err(BodyError::Busy)
        ));
        assert_eq!(budget.in_flight(), 60);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.admit(&with_length(60)).await.map(|p| p.bytes()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        assert_eq!(waiting.await.unwrap().unwrap(), 60);
        assert_eq!(budget.peak(), 60);
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn lengths_are_checked_before_anything_is_reserved() {
        let budget = BodyBudget::new(100, 1_000, DEFAULT_WAIT);
        assert_eq!(budget.max_body(), 100, "lowered to the budget");
        let err = budget.admit(&with_length(101)).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let err = budget.admit(&HeaderMap::new()).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::LENGTH_REQUIRED);
        let mut chunked = with_length(10);
        chunked.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        let err = budget.admit(&chunked).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::LENGTH_REQUIRED);
        assert_eq!(budget.peak(), 0);
    }

    #[tokio::test]
    async fn reads_exactly_the_declared_length() {
        let budget = BodyBudget::new(100, 100, DEFAULT_WAIT);
        let permit = budget.admit(&with_length(5)).await.unwrap();
        let chunks = futures_util::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"he")),
            Ok(Bytes::from_static(b"llo")),
        ]);
        assert_eq!(permit.read(chunks).await.unwrap(), "hello");
        let long =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"hello!"))]);
        assert!(matches!(
            permit.read(long).await,
            Err(BodyError::LongerThanDeclared)
        ));
    }

    #[tokio::test]
    async fn large_bodies_are_read_into_their_own_mapping() {
        let budget = BodyBudget::new(4 * MAPPED_BODY, 4 * MAPPED_BODY, DEFAULT_WAIT);
        let length = 2 * MAPPED_BODY + 3;
        let body: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
        let permit = budget.admit(&with_length(length as u64)).await.unwrap();
        let chunks = futures_util::stream::iter(
            body.chunks(4096)
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        assert_eq!(permit.read(chunks).await.unwrap(), body);
        let longer = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![
                0u8;
                length + 1
            ]))]);
        assert!(matches!(
            permit.read(longer).await,
            Err(BodyError::LongerThanDeclared)
        ));
    }
}
