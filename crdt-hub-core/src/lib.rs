//! crdt-hub-core: the part of crdt-hub that needs no socket, file,
//! database, async runtime or task: yrs and plain data.
//!
//! - [`protocol`]: y-websocket frames in and out, every client byte through
//!   [`decode_guard`] (and awareness states through [`awareness_guard`])
//!   before yrs decodes it;
//! - [`room`]: the sans-IO room (which frame goes to whom), the updates it
//!   holds until what they build on arrives, and presence (whose awareness
//!   it takes);
//! - [`subdocs`]: the policy for subdocuments and freeing documents that
//!   hold them;
//! - [`restore_diff`]: the update that brings a document back to a version
//!   (the server's `restore` module orchestrates a restore around it);
//! - [`doc_json`]: a document's content as JSON;
//! - `fuzzing` (feature `fuzzing`): the fuzz targets' bodies.
//!
//! Why a crate of its own: these modules were IO-free inside the server
//! only by discipline, and nothing stopped one from reaching for the
//! runtime, the store or the network. Here the dependency list says it (no
//! tokio, no HTTP, no sqlx, no Redis), the fuzz targets compile this crate
//! and not the server, and its tests run without any service. The server
//! (`crdt-hub`) adapts sockets, storage, the cluster bus and HTTP to it, and
//! re-exports these modules under their old paths (`crdt_hub::protocol`,
//! `crdt_hub::room::core`, …).
//!
//! Metrics and logs go through the `metrics` and `tracing` facades, which
//! do nothing until the server installs a recorder and a subscriber
//! ([`metrics`]).

pub mod awareness_guard;
pub mod decode_guard;
pub mod doc_json;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hocuspocus;
pub mod metrics;
pub mod protocol;
pub mod restore_diff;
pub mod room;
pub mod subdocs;
