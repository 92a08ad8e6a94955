//! Shared helpers of ringdaq's benchmarks.

/// Percentile `p` (0..=100) of sorted `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A page-aligned, pre-faulted buffer of `len` bytes (as a frame-ring slot is).
pub fn aligned_buffer(len: usize) -> Vec<u16> {
    // Vec<u16> of a multiple of 4096 bytes from the system allocator is page aligned for large sizes (mmap);
    // touching it pre-faults it.
    let mut v = vec![0u16; len.div_ceil(2)];
    v.iter_mut().step_by(2048).for_each(|x| *x = 1);
    v
}
