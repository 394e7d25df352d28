//! One client frame of arbitrary bytes through `protocol::parse_frame` (and
//! so the decode guard) into a `Room` the client has joined; and the same
//! bytes as a Hocuspocus provider's message, through its framing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    crdt_hub_core::fuzzing::frame_into_room(data);
});
