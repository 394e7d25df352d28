//! Rooms: the sans-IO document logic ([`core`], with [`held`],
//! [`presence`] and [`presence_batch`], from `crdt-hub-core`), the task
//! that owns each room (`owner`, set up by `config`, timing its frames with
//! `fanout` and `presence_window`), and the registry that creates each
//! room exactly once (`registry`).

mod config;
mod fanout;
mod owner;
pub mod peer;
mod presence_window;
mod registry;
pub mod request;
mod threads;

pub use config::RoomConfig;
pub use crdt_hub_core::room::{
    Access, Effects, PeerId, Rejected, Room, RoomError, core, held, presence, presence_batch,
};
pub use owner::{RoomCommand, RoomUnavailable};
pub use peer::{
    InboxHandle, Next, OutboxLimits, PeerInbox, PeerLink, QueueFull, WrittenMark, link,
    multiplexed_link,
};
pub use registry::{RoomHandle, Rooms};
pub use request::{
    Accepted, RequestFailed, RoomEvent, RoomInfo, RoomReply, RoomRequest, SnapshotFailed,
    Subscription, TransformError,
};
pub use threads::RoomThreads;
