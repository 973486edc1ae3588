//! Heap bytes at their peak: a counting allocator, which the `lossc` binary installs, and which `lossc
//! bench` reads to report the memory its timed calls hold at once.
//!
//! Every allocation and release through [`Counting`] adjusts one live count and raises the peak; [`mark`]
//! starts a stretch of code (the peak drops to what is live), [`peak_since`] reads its highest point.
//! Where the allocator is not installed (lossc used as a library) both return `None`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting live and peak bytes.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
    INSTALLED.store(true, Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator with the caller's arguments; the counters are
// bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Starts a stretch: the peak drops to the bytes live now, which are returned (`None` without the
/// counting allocator).
pub fn mark() -> Option<usize> {
    let live = LIVE.load(Relaxed);
    PEAK.store(live, Relaxed);
    INSTALLED.load(Relaxed).then_some(live)
}

/// The most bytes live at once since [`mark`] returned `base`, above `base`.
pub fn peak_since(base: Option<usize>) -> Option<usize> {
    base.map(|b| PEAK.load(Relaxed).saturating_sub(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_a_stretch_holds_at_once() {
        // The test binary does not install the allocator: drive the counters as it would.
        let live = LIVE.load(Relaxed);
        PEAK.store(live, Relaxed);
        let base = Some(live);
        grew(100);
        grew(50);
        shrank(150);
        grew(20);
        assert_eq!(peak_since(base), Some(150));
        shrank(20);
    }
}
