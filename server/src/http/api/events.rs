//! `GET /api/rooms/{room}/events`: every update applied to the room, as
//! Server-Sent Events, for read-only consumers such as dashboards.
//!
//! Each event is `event: update`, `id: {generation}-{sequence}`, `data:`
//! the update in base64; a Hocuspocus provider's stateless message is
//! `event: stateless` with the payload as `data:` (no id). The stream starts with `event: ready` carrying the
//! current id. A consumer that reconnects with a `Last-Event-ID` other than
//! that id (it missed updates, or the room was reloaded meanwhile), or that
//! falls more than the buffer behind, gets `event: refetch`: it should
//! fetch `/state` again and carry on from there.

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use crdt_store::RoomName;
use futures_util::{Stream, StreamExt, stream};
use tokio::sync::broadcast;
use warp::reply::Reply;
use warp::sse::Event;

use super::{ApiError, ApiResult};
use crate::app::App;
use crate::room::{RoomEvent, RoomReply, RoomRequest};

pub async fn stream(
    app: &App,
    room: Result<RoomName, ApiError>,
    last_event_id: Option<String>,
) -> ApiResult {
    let room = room?;
    // Reading never creates a room: a stream for a room that exists
    // nowhere would load an empty one and hold it in memory.
    super::rooms::require_room(app, &room).await?;
    let RoomReply::Events(subscription) =
        app.rooms.request(&room, || RoomRequest::Subscribe).await?
    else {
        return Err(ApiError::Internal("unexpected reply".into()));
    };
    let mut opening = vec![
        Event::default()
            .event("ready")
            .id(subscription.last_id.clone())
            .data(subscription.last_id.clone()),
    ];
    if last_event_id.is_some_and(|seen| seen != subscription.last_id) {
        opening.push(refetch("missed events since Last-Event-ID"));
    }
    let shutdown = app.shutdown.clone();
    let updates =
        updates(subscription.events).take_until(async move { shutdown.cancelled().await });
    let events = stream::iter(opening)
        .chain(updates)
        .map(Ok::<_, Infallible>);
    let keep_alive = warp::sse::keep_alive().interval(Duration::from_secs(15));
    Ok(warp::sse::reply(keep_alive.stream(events)).into_response())
}

fn updates(receiver: broadcast::Receiver<RoomEvent>) -> impl Stream<Item = Event> {
    stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(RoomEvent::Update { id, update }) => Event::default()
                .event("update")
                .id(id)
                .data(BASE64.encode(&update)),
            // No id: ids count updates, which a consumer resumes from.
            Ok(RoomEvent::Stateless { payload }) => {
                Event::default().event("stateless").data(&*payload)
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                refetch(&format!("fell {missed} updates behind"))
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((event, receiver))
    })
}

fn refetch(reason: &str) -> Event {
    Event::default().event("refetch").data(reason)
}
