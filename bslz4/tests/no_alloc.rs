//! What a warm `Compressor` allocates per chunk, counted by a global allocator that wraps the system's: nothing of
//! its own, only `lz4_flex`'s hash table once per block (see `Compressor`'s documentation for why). If lz4_flex
//! stops allocating, or the compressor starts, this test says so.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting has no effect on the
// memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded under the caller's contract for `alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (every allocation goes through `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded under the caller's contract for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_warm_compressor_allocates_only_lz4_flexs_table_per_block() {
    // A K2 IS sector's worth of 16-bit pixels: 238,080 elements, 58 whole blocks of 4096 and a last one of 512.
    let frames: Vec<Vec<u8>> = (0..3u16)
        .map(|f| (0..930 * 256u32).flat_map(|i| ((i as u16 ^ f.wrapping_mul(7919)) & 0x0FFF).to_le_bytes()).collect())
        .collect();
    let blocks = 930 * 256 / 4096 + 1;
    let mut compressor = bslz4::Compressor::default();
    let mut out = Vec::new();
    compressor.compress(&frames[0], 2, &mut out).unwrap();
    // The output buffer keeps the capacity of the worst case from the first chunk.
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for f in &frames {
        compressor.compress(f, 2, &mut out).unwrap();
    }
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 3 * blocks as u64);
    let mut back = vec![0u8; frames[2].len()];
    bslz4::decompress(&out, 2, &mut back).unwrap();
    assert_eq!(back, frames[2]);
}
