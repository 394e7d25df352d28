//! Rooms: the sans-IO document logic ([`core`], with [`held`] and
//! [`presence`], from `crdt-hub-core`), the task that owns each room
//! (`owner`, set up by `config`), and the registry that creates each room exactly once
//! (`registry`).

mod config;
mod fanout;
mod owner;
pub mod peer;
mod registry;
pub mod request;

pub use config::RoomConfig;
pub use crdt_hub_core::room::{
    Access, Effects, PeerId, Rejected, Room, RoomError, core, held, presence,
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
