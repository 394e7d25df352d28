//! crdt-hub: a Yjs sync server. Unmodified y-websocket clients connect to
//! `/{room}`; each room's document lives in one owner task, is merged with
//! yrs, fanned out to the room's other peers and persisted through
//! `crdt-store`.

pub mod app;
pub mod cli;
pub mod close;
pub mod connection;
pub mod http;
pub mod logging;
pub mod persist;
pub mod protocol;
pub mod room;
pub mod server;
pub mod units;
