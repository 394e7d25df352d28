//! Reads a room's stream (`XREAD BLOCK`) on a connection of its own (in
//! cluster mode: its own connection to each master, see `connection`) and
//! hands what other nodes published to the room's owner. Starts where the
//! stream ended when the room claimed its interest (so it reads whatever a
//! node that saw the claim published), or, when that claim failed, at the
//! stream's end once Redis answers; after a Redis error it reconnects with
//! backoff and continues after the last entry it saw, so a blip loses
//! nothing the stream still holds (anti-entropy covers the rest).

use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamReadReply;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::connection::Connection;
use super::{BusMessage, Cluster, Remote};
use crate::room::RoomCommand;

/// How long one `XREAD` blocks on the server.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries read per `XREAD`.
const COUNT: usize = 512;

pub struct Reader {
    pub cluster: Arc<Cluster>,
    pub key: String,
    /// On every (re)connect the reader tells the room, which then asks
    /// the other nodes for what it missed (when it shares the room).
    pub inbox: mpsc::Sender<RoomCommand>,
    /// Where to start: the stream's end as the room's claim saw it, `None`
    /// when the claim failed.
    pub start: oneshot::Receiver<Option<String>>,
    pub stop: CancellationToken,
}

impl Reader {
    pub async fn run(mut self) {
        let stop = self.stop.clone();
        let start = std::mem::replace(&mut self.start, oneshot::channel().1);
        tokio::select! {
            () = stop.cancelled() => {}
            () = async {
                let start = start.await.ok().flatten();
                self.read(start).await;
            } => {}
        }
        debug!("reader stopped");
    }

    async fn read(&self, start: Option<String>) {
        // Without a start, the first connection tells where the stream ends.
        let mut last: Option<String> = start;
        let mut backoff = super::redis_backoff();
        loop {
            let mut connection = match self.cluster.redis.dedicated().await {
                Ok(connection) => connection,
                Err(e) => {
                    super::metrics::redis_error();
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "cannot reach Redis; serving this room locally meanwhile");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            let position = match &last {
                Some(last) => Ok(last.clone()),
                None => stream_end(&mut connection, &self.key).await,
            };
            match position {
                Ok(position) => last = Some(position),
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "reading the room's stream failed; reconnecting");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            let last = last.as_mut().expect("positioned");
            // Positioned before the room asks: every answer is read.
            // Anything missed while disconnected is repaired by the state
            // vector exchange this starts.
            if let Err(mpsc::error::TrySendError::Closed(_)) =
                self.inbox.try_send(RoomCommand::Cluster(Remote::Connected))
            {
                return;
            }
            loop {
                let mut command = redis::cmd("XREAD");
                command
                    .arg("COUNT")
                    .arg(COUNT)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.key)
                    .arg(&*last);
                let read = command.query_async::<Option<StreamReadReply>>(&mut connection);
                let reply = match tokio::time::timeout(BLOCK * 2, read).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => {
                        super::metrics::redis_error();
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "reading the room's stream failed; reconnecting");
                        tokio::time::sleep(delay).await;
                        break;
                    }
                    Err(_) => {
                        warn!("Redis did not answer a blocking read in time; reconnecting");
                        break;
                    }
                };
                backoff.reset();
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    last.clone_from(&entry.id);
                    let node: Option<String> = entry.get("n");
                    if node.as_deref() == Some(self.cluster.node.as_str()) {
                        continue; // our own
                    }
                    let kind: String = entry.get("k").unwrap_or_default();
                    let payload: Vec<u8> = entry.get("d").unwrap_or_default();
                    let Some(message) = BusMessage::parse(&kind, payload) else {
                        continue;
                    };
                    super::metrics::received(&kind);
                    let command = RoomCommand::Cluster(Remote::Message(message));
                    if self.inbox.send(command).await.is_err() {
                        return; // the room stopped
                    }
                }
            }
        }
    }
}

/// The id of the stream's last entry (`0-0` when it is empty or missing).
async fn stream_end(connection: &mut Connection, key: &str) -> redis::RedisResult<String> {
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(newest
        .ids
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_string(), |entry| entry.id))
}
