//! Compressing a frame with several threads: bitshuffle + LZ4 compresses independent blocks of 8 KiB, so a
//! frame is cut at block boundaries into one part per thread, each part compressed by a [`bslz4::Compressor`]
//! of its own (kept from frame to frame with its working buffers), and
//! the parts' blocks joined under one chunk header. The result is byte for byte what one `compress` of the whole
//! frame gives (the last part ends with the same short block and raw tail; checked below), so any decoder
//! (hdf5plugin) reads it.
//!
//! Threads are scoped to each frame: the writer's loop waits for the frame's chunk before it commits the slot, so
//! the frame ring holds frames not yet compressed, and `ringdaq status` shows them as the frame ring's backlog
//! (`frame_ring_used`); the CPU time spent compressing is counted in `writer.compress_cpu_ns`.

/// Compression threads: the `RINGDAQ_COMPRESS_THREADS` environment variable, else the cores available (a
/// K2 IS frame at 400 frames/s is 3 GB/s; one core compresses about 1 GB/s).
pub(super) fn threads() -> usize {
    std::env::var("RINGDAQ_COMPRESS_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .clamp(1, 64)
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// Compresses `src` into `out` with `c`, on this thread: the thread's CPU time it took, ns.
fn compress_part(c: &mut bslz4::Compressor, src: &[u8], out: &mut Vec<u8>) -> Result<u64, String> {
    let t = thread_cpu_ns();
    c.compress(src, 2, out).map_err(|e| e.to_string())?;
    Ok(thread_cpu_ns().saturating_sub(t))
}

/// Compresses frames of `u16` pixels into filter 32008 chunks with a number of threads.
#[derive(Debug)]
pub struct Compressor {
    threads: usize,
    /// One compressor and output buffer per part (reused).
    parts: Vec<(bslz4::Compressor, Vec<u8>)>,
    /// The joined chunk (reused).
    out: Vec<u8>,
    /// CPU time spent compressing, all threads.
    cpu_ns: u64,
}

impl Compressor {
    /// A compressor that cuts each frame into `threads` parts.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        Self { threads, parts: vec![Default::default(); threads], out: Vec::new(), cpu_ns: 0 }
    }

    /// CPU time spent compressing so far, ns (all threads).
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns
    }

    /// Compresses `input` (little-endian `u16` pixels) into one chunk.
    pub fn compress(&mut self, input: &[u8]) -> Result<&[u8], String> {
        let block = bslz4::default_block_size(2) * 2;
        let blocks = input.len() / block;
        let n = self.threads.min(blocks).max(1);
        if n == 1 {
            self.cpu_ns += compress_part(&mut self.parts[0].0, input, &mut self.out)?;
            return Ok(&self.out);
        }
        // Part k: blocks [k × blocks / n, (k + 1) × blocks / n); the last also takes the tail.
        let cut = |k: usize| if k == n { input.len() } else { k * blocks / n * block };
        let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
            let mut parts = self.parts.iter_mut().take(n).enumerate();
            let first = parts.next();
            let handles: Vec<_> = parts
                .map(|(k, (c, buf))| {
                    let src = &input[cut(k)..cut(k + 1)];
                    s.spawn(move || compress_part(c, src, buf))
                })
                .collect();
            let mut results = Vec::with_capacity(n);
            if let Some((_, (c, buf))) = first {
                results.push(compress_part(c, &input[..cut(1)], buf));
            }
            for h in handles {
                // A compression thread that panicked fails the frame (and so the acquisition), not the writer.
                results.push(h.join().unwrap_or_else(|_| Err("a compression thread panicked".into())));
            }
            results
        });
        for r in results {
            self.cpu_ns += r?;
        }
        self.out.clear();
        self.out.extend_from_slice(&(input.len() as u64).to_be_bytes());
        self.out.extend_from_slice(&(block as u32).to_be_bytes());
        for (_, p) in &self.parts[..n] {
            self.out.extend_from_slice(p.get(bslz4::HEADER_BYTES..).unwrap_or_default());
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_join_into_the_chunk_of_one_compress() {
        for px in [0usize, 3, 4096, 4096 * 3 + 5, 4096 * 7 + 8, 1860 * 64 + 3] {
            let input: Vec<u8> = (0..px as u32)
                .flat_map(|i| ((i.wrapping_mul(2_654_435_761) >> 20) as u16 & 0x0fff).to_le_bytes())
                .collect();
            let mut whole = Vec::new();
            bslz4::compress(&input, 2, &mut whole).unwrap();
            for threads in [1, 2, 3, 5] {
                let mut c = Compressor::new(threads);
                assert_eq!(c.compress(&input).unwrap(), &whole[..], "{px} pixels, {threads} threads");
                let mut back = vec![0u8; input.len()];
                bslz4::decompress(c.compress(&input).unwrap(), 2, &mut back).unwrap();
                assert_eq!(back, input);
            }
        }
    }
}
