//! An edit script for three clients of one room, with the room's frames
//! delivered out of order and twice: every replica must end identical.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    crdt_hub_core::fuzzing::convergence(data);
});
