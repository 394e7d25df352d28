//! An arbitrary Yjs v1 update through the decode guard, then decoded and
//! applied to a document with content.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    crdt_hub::fuzzing::decode_apply_update(data);
});
