//! crdt-hub: a Yjs sync server. Unmodified y-websocket clients connect to
//! `/{room}`; each room's document lives in one owner task, is merged with
//! yrs, fanned out to the room's other peers and persisted through
//! `crdt-store`.
//!
//! The IO-free logic (frame decoding and its guards, the sans-IO room,
//! restores, document JSON) lives in `crdt-hub-core`; it is re-exported
//! here under the paths it always had.

pub use crdt_hub_core::{awareness_guard, decode_guard, doc_json, protocol, restore_diff, subdocs};

pub mod accept_backoff;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod body_budget;
pub mod cli;
pub mod cli_security;
pub mod close;
pub mod cluster;
pub mod connection;
pub mod entry;
pub mod frames;
pub mod grant;
pub mod hocuspocus;
pub mod http;
pub mod ip_connections;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod nofile;
pub mod persist;
pub mod refusals;
pub mod restore;
pub mod revocations;
pub mod room;
pub mod saved;
pub mod server;
pub mod sessions;
pub mod shared_socket;
pub mod snapshot;
pub mod tls;
pub mod units;
pub mod webhooks;
