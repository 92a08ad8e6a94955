//! ringdaq's benchmarks: each figure beside a baseline measured in the same run on the same machine.
//!
//! `cargo build --release && target/release/perf` runs them all (see BENCHMARKS.md); the modules here hold
//! the measurements, the binaries in `src/bin` drive them.

pub mod bslz4;
pub mod decode;
pub mod h5;
pub mod idle;
pub mod ingest;
pub mod latency;
pub mod pipeline;
pub mod procfs;
pub mod steady;
pub mod write;

/// Percentile `p` (0..=100) of sorted `v` (nearest rank).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 50.0)
}

/// A page-aligned, pre-faulted buffer of u16, as a frame-ring slot's pixels are. (A large `Vec` from the system
/// allocator is not page aligned: malloc's mmap chunks start 16 bytes into their first page.)
pub struct PageBuffer {
    ptr: std::ptr::NonNull<u16>,
    len: usize,
    layout: std::alloc::Layout,
}

impl PageBuffer {
    /// `bytes` bytes (rounded up to whole u16), zeroed and touched.
    pub fn new(bytes: usize) -> Self {
        let len = bytes.div_ceil(2);
        let layout = std::alloc::Layout::from_size_align((len * 2).max(1), 4096).expect("page-aligned layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw.cast::<u16>()) else { std::alloc::handle_alloc_error(layout) };
        let mut b = Self { ptr, len, layout };
        // Zeroed pages from mmap are not yet mapped: touch one u16 per page.
        b.iter_mut().step_by(2048).for_each(|x| *x = 1);
        b
    }
}

impl std::ops::Deref for PageBuffer {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        // SAFETY: `ptr` holds `len` initialised (zeroed at least) u16 until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for PageBuffer {
    fn deref_mut(&mut self) -> &mut [u16] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) }
    }
}
