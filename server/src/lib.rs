//! crdt-hub: a Yjs sync server. Unmodified y-websocket clients connect to
//! `/{room}`; each room's document lives in one owner task, is merged with
//! yrs, fanned out to the room's other peers and persisted through
//! `crdt-store`.

pub mod accept_backoff;
pub mod app;
pub mod auth;
pub mod awareness_guard;
pub mod body_budget;
pub mod cli;
pub mod cli_security;
pub mod close;
pub mod cluster;
pub mod connection;
pub mod decode_guard;
pub mod doc_json;
pub mod frames;
pub mod fuzzing;
pub mod http;
pub mod ip_connections;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod nofile;
pub mod persist;
pub mod protocol;
pub mod refusals;
pub mod restore;
pub mod revocations;
pub mod room;
pub mod server;
pub mod sessions;
pub mod shared_socket;
pub mod snapshot;
pub mod subdocs;
pub mod tls;
pub mod units;
