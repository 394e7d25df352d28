//! The room without its task: [`core`] takes a peer's decoded messages and
//! says which frames go to whom, [`held`] keeps what waits for what it
//! builds on (cut by `gaps`), and [`presence`] decides whose awareness
//! states a room takes. The server's room owner task drives them.

pub mod core;
mod gaps;
pub mod held;
pub mod presence;

pub use self::core::{Access, Effects, Rejected, Room, RoomError};

/// Identifies one connection within the process.
pub type PeerId = u64;
