//! Rooms: the sans-IO document logic ([`core`]), the task that owns each
//! room ([`owner`]), and the registry that creates each room exactly once
//! ([`registry`]).

pub mod core;
mod fanout;
mod gaps;
pub mod held;
mod owner;
pub mod peer;
pub mod presence;
mod registry;
pub mod request;

pub use self::core::{Access, Effects, PeerId, Rejected, Room, RoomError};
pub use owner::{RoomCommand, RoomConfig, RoomUnavailable};
pub use peer::{Next, OutboxLimits, PeerInbox, PeerLink, QueueFull, link};
pub use registry::{RoomHandle, Rooms};
pub use request::{Accepted, RoomEvent, RoomInfo, RoomReply, RoomRequest, Subscription};
