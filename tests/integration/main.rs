//! Integration tests: the real server on loopback ports, spoken to by
//! y-websocket clients built from yrs parts.

mod support;

mod a_services;
mod api;
mod api_roles;
mod bad_input;
mod cluster;
mod convergence_props;
mod durability;
mod fuzz_regressions;
mod gap_props;
mod gaps;
mod hocuspocus;
mod hostile_access;
mod hostile_awareness;
mod hostile_network;
mod hostile_outbox;
mod keys;
mod memory_after_sync;
mod metrics;
mod restore;
mod room_threads;
mod rooms;
mod saved;
mod security;
mod shutdown;
mod snapshot_cli;
mod subdocuments;
mod sync;
mod tls;
mod webhooks;
