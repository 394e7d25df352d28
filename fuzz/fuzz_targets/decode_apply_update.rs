//! An arbitrary Yjs v1 update through the decode guard, then decoded and
//! applied to a document with content. A counting allocator checks what the
//! guard promises: an accepted update allocates at most about its estimate,
//! a refused one next to nothing.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use libfuzzer_sys::fuzz_target;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(live, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(p, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What every run allocates whatever the input: the seeded document, the
/// re-encoded state, the guard's walk.
const BASELINE: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let estimate = crdt_hub_core::decode_guard::check_update_v1(data).map(|s| s.estimated_bytes);
    crdt_hub_core::fuzzing::decode_apply_update(data);
    let peak = (PEAK.load(Relaxed) - before) as u64;
    let allowed = match estimate {
        Ok(estimate) => 2 * estimate + BASELINE,
        Err(_) => BASELINE + 64 * data.len() as u64,
    };
    assert!(
        peak <= allowed,
        "peak {peak} B over {allowed} B (estimate {estimate:?}, input {} B)",
        data.len()
    );
});
