//! Integration tests: the real server on loopback ports, spoken to by
//! y-websocket clients built from yrs parts.

mod support;

mod bad_input;
mod durability;
mod rooms;
mod shutdown;
mod sync;
