//! mimalloc as the global allocator, counting the bytes it has handed out and not taken
//! back ([`LIVE`]) and the most it has held since [`reset_peak`] ([`PEAK`]): what the
//! memory benches measure. Bytes are mimalloc's size classes (`mi_good_size`), what a
//! request really takes.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// Bytes handed out and not yet taken back.
pub static LIVE: AtomicIsize = AtomicIsize::new(0);

/// The most [`LIVE`] reached since the last [`reset_peak`].
pub static PEAK: AtomicIsize = AtomicIsize::new(0);

/// Starts measuring a peak from what is live now.
#[allow(dead_code)]
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// mimalloc with the counters.
pub struct Counting;

/// The size mimalloc actually hands out for a request of `size` bytes.
fn class(size: usize) -> isize {
    // SAFETY: a pure function of its argument.
    unsafe { libmimalloc_sys::mi_good_size(size) as isize }
}

fn grew(by: isize) {
    let live = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is passed to mimalloc unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(layout);
        if !p.is_null() {
            grew(class(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc_zeroed(layout);
        if !p.is_null() {
            grew(class(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout);
        LIVE.fetch_sub(class(layout.size()), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = mimalloc::MiMalloc.realloc(ptr, layout, new_size);
        if !p.is_null() {
            grew(class(new_size) - class(layout.size()));
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
