//! Counting the heap allocations of a process, so that "nothing is allocated per datagram or per frame" is a
//! measured property of the stages rather than a hope.
//!
//! A stage binary installs [`CountingAllocator`] as its global allocator; every [`StageRecord::beat`] copies the
//! totals into the stage's record in the region, where `ringdaq status` (`receiver.allocations`, ...) and the
//! benchmarks read them. The cost is one uncontended relaxed atomic add per allocation.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: shm_protocol::alloc_count::CountingAllocator = shm_protocol::alloc_count::CountingAllocator;
//!
//! let before = shm_protocol::alloc_count::allocations();
//! let v = vec![1u8; 100];
//! assert_eq!(shm_protocol::alloc_count::allocations() - before, 1);
//! # drop(v);
//! ```
//!
//! [`StageRecord::beat`]: crate::pipeline::StageRecord::beat

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting allocations (`alloc`, `alloc_zeroed` and `realloc` calls) and their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

impl CountingAllocator {
    #[inline]
    fn count(size: usize) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc` contract; counting
// touches only two atomics and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: the caller's obligations (non-zero size) are passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's, unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Heap allocations of this process so far (0 where [`CountingAllocator`] is not the global allocator).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Bytes requested by those allocations.
pub fn allocated_bytes() -> u64 {
    ALLOCATED_BYTES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_goes_through_it() {
        let a = CountingAllocator;
        let layout = Layout::from_size_align(100, 8).unwrap();
        let (n, b) = (allocations(), allocated_bytes());
        // SAFETY: non-zero layout; freed with the same layout after the realloc.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            let p = a.realloc(p, layout, 200);
            assert!(!p.is_null());
            a.dealloc(p, Layout::from_size_align(200, 8).unwrap());
        }
        assert_eq!(allocations() - n, 2);
        assert_eq!(allocated_bytes() - b, 300);
    }
}
