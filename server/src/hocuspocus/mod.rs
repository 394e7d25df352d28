//! Tiptap's `@hocuspocus/provider` on the same port: a WebSocket upgrade at
//! `/` speaks the Hocuspocus protocol ([`crdt_hub_core::hocuspocus`]).
//!
//! One socket carries any number of documents (a
//! `HocuspocusProviderWebsocket` shared by several providers). Each
//! document is attached when its provider sends its token, checked with
//! the same rules, rooms and roles as `?token=` on a y-websocket upgrade,
//! and then takes part in its room as a peer of its own: a Hocuspocus
//! client and a y-websocket client in the same room see each other's
//! edits and presence. The room's frames reach the provider with the
//! document's address in front (`document.rs`).
//!
//! Unlike Hocuspocus, which acknowledges an update once it is in memory,
//! the sync status (type 8) is sent once the journal flush holding the
//! update has committed: a provider whose `unsyncedChanges` reached 0
//! has its edits in the database.

mod document;
mod session;

pub use session::{Multiplexed, serve};
