//! The 4D-STEM pattern: what a K2 IS sees during a scan, closely enough that compression figures mean something.
//!
//! Every pixel is `min(noise + hits, clip)`:
//! - **dark offset and read noise**: `noise = NOISE[(row_key + col) mod 65536]`, where `NOISE` is a fixed table of
//!   `DARK_OFFSET` (100) plus an approximately normal read noise (the sum of four uniform 2-bit values minus 6:
//!   −6..6, σ ≈ 2.2 counts) and `row_key = splitmix64(seed + (frame_id << 32 | row))`;
//! - **electron hits**, each adding `HIT_MIN + 2·u` counts (u uniform in 0..256: 150..660, "a few hundred"):
//!   inside the convergent-beam disk, a Poisson number per pixel with mean `DISK_HITS_PER_PIXEL` (0.05), from
//!   `splitmix64(row_key ^ pair)` for each pair of columns (32 bits a pixel) and, for the rare pixel that is hit,
//!   a second hash for the amplitudes; outside it, per row a Poisson number (at most 4) with mean
//!   `BACKGROUND_HITS_PER_PIXEL · cols` (0.001 a pixel: 2 a K2 IS row) at columns and with amplitudes taken from
//!   two hashes of `row_key`;
//! - **the disk** has radius `min(rows, cols)/8` (232 pixels on a K2 IS: 4.5 % of the frame) and its centre
//!   follows the scan position: frame `f` is position `f mod 64²` of a 64 × 64 raster scan, which moves the
//!   centre over the middle quarter of the frame (±256 columns and ±232 rows on a K2 IS);
//! - `clip` is the format's pixel mask, at most 14 bits (`0x0FFF` on a K2 IS: a pile-up saturates as the camera's
//!   12-bit ADC does; 0x3FFF elsewhere).
//!
//! About 12,000 electrons a K2 IS frame: 4.9 million a second at 400 frames/s (0.8 pA), a counting-mode dose.
//! On JUNGFRAU the same formula gives gain-0 raw values (the top two gain bits 00) with a low pedestal: a plausible
//! low-flux frame, not a calibrated one.
//!
//! [`pixel`] evaluates one pixel (hashes and all); [`StemFrames::fill`] makes whole frames, row by row, copying
//! noise from the table and hashing only inside the disk's bounding rows, so one core makes hundreds of K2 IS
//! frames a second. The tests hold the two to the same values.

use super::splitmix64;

/// Dark offset (counts).
pub const DARK_OFFSET: u16 = 100;
/// Smallest signal of one electron hit (counts); a hit adds `HIT_MIN + 2·u`, u uniform in 0..256.
pub const HIT_MIN: u32 = 150;
/// Mean hits per pixel per frame inside the disk.
pub const DISK_HITS_PER_PIXEL: f64 = 0.05;
/// Mean hits per pixel per frame outside the disk.
pub const BACKGROUND_HITS_PER_PIXEL: f64 = 0.001;
/// Side of the square raster scan: frame `f` is scan position `f mod SCAN_SIDE²`.
pub const SCAN_SIDE: u32 = 64;
/// Entries of the noise table (a power of two).
const NOISE_LEN: usize = 1 << 16;
/// Most hits per pixel in the disk, and per row outside it, that the pattern makes.
const MAX_HITS: usize = 4;

/// What the pattern needs of the format: the frame's size and the clipping value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StemGeometry {
    /// Frame rows.
    pub rows: usize,
    /// Frame columns.
    pub cols: usize,
    /// Largest value (pixel mask, at most 0x3FFF).
    pub clip: u16,
}

impl StemGeometry {
    /// The geometry of a format.
    pub fn of(f: &dyn crate::format::DetectorFormat) -> Self {
        Self { rows: f.rows(), cols: f.cols(), clip: f.pixel_mask().min(0x3FFF) }
    }

    /// Centre (column, row) of the disk in frame `frame_id`, and its radius.
    pub fn disk(&self, frame_id: u32) -> (i64, i64, i64) {
        let s = SCAN_SIDE as i64;
        let pos = (frame_id % (SCAN_SIDE * SCAN_SIDE)) as i64;
        let (sx, sy) = (pos % s, pos / s);
        let (rows, cols) = (self.rows as i64, self.cols as i64);
        let cx = cols * 3 / 8 + sx * cols / (4 * s);
        let cy = rows * 3 / 8 + sy * rows / (4 * s);
        (cx, cy, rows.min(cols) / 8)
    }
}

/// The noise table entry `i`: dark offset plus read noise.
fn noise_entry(i: usize) -> u16 {
    let h = splitmix64(0x5EED_0FD4_u64 ^ i as u64);
    let sum: u64 = (0..4).map(|k| (h >> (2 * k)) & 3).sum();
    DARK_OFFSET - 6 + sum as u16
}

/// Per-row key.
fn row_key(seed: u64, frame_id: u32, row: usize) -> u64 {
    splitmix64(seed.wrapping_add(u64::from(frame_id) << 32 | row as u64))
}

/// Upper bounds of a uniform u32 for 0, 1, 2, 3 events of a Poisson variable with mean `mean` (4 or more above).
fn poisson_thresholds(mean: f64) -> [u64; MAX_HITS] {
    let mut t = [0u64; MAX_HITS];
    let (mut p, mut cdf) = ((-mean).exp(), 0.0);
    for (k, t) in t.iter_mut().enumerate() {
        cdf += p;
        p *= mean / (k + 1) as f64;
        *t = (cdf * 4_294_967_296.0).min(4_294_967_296.0) as u64;
    }
    t
}

/// How many events a uniform `u` (0..2³²) stands for.
fn events(u: u64, t: &[u64; MAX_HITS]) -> usize {
    t.iter().take_while(|&&b| u >= b).count()
}

/// Amplitude of hit `j` from the 64 random bits `h`.
fn amplitude(h: u64, j: usize) -> u32 {
    HIT_MIN + 2 * ((h >> (8 * j)) & 0xFF) as u32
}

/// The background hits of a row: (column, amplitude) of each.
fn background_hits(key: u64, g: &StemGeometry, t: &[u64; MAX_HITS]) -> ([(usize, u32); MAX_HITS], usize) {
    let h = splitmix64(key ^ 0xB4C6_0000_0000_0001);
    let a = splitmix64(key ^ 0xB4C6_0000_0000_0002);
    let n = events(h & 0xFFFF_FFFF, t);
    let mut hits = [(0usize, 0u32); MAX_HITS];
    for (j, hit) in hits.iter_mut().enumerate().take(n) {
        // 8 bits a column position (32 bits for 4): col = u·cols/256 plus 0..cols/256 from the amplitude hash.
        let u = ((h >> (32 + 8 * j)) & 0xFF) as usize;
        let fine = ((a >> (32 + 8 * j)) & 0xFF) as usize * g.cols.div_ceil(256) / 256;
        *hit = ((u * g.cols / 256 + fine).min(g.cols - 1), amplitude(a, j));
    }
    (hits, n)
}

/// The disk hits of pixel `col` of a row, given the pair hash `h` of its column pair: the sum of amplitudes.
fn disk_hits(key: u64, col: usize, h: u64, t: &[u64; MAX_HITS]) -> u32 {
    let u = if col.is_multiple_of(2) { h & 0xFFFF_FFFF } else { h >> 32 };
    let n = events(u, t);
    if n == 0 {
        return 0;
    }
    let a = splitmix64(key ^ (col as u64) << 20 ^ 0xD15C);
    (0..n).map(|j| amplitude(a, j)).sum()
}

/// The hash of column pair `col / 2` in a row.
fn pair_hash(key: u64, col: usize) -> u64 {
    splitmix64(key.wrapping_add((col / 2) as u64 + 1))
}

/// One pixel of the 4D-STEM pattern (every hash evaluated; for checks of single pixels).
pub fn pixel(seed: u64, g: &StemGeometry, frame_id: u32, row: usize, col: usize) -> u16 {
    let key = row_key(seed, frame_id, row);
    let mut v = u32::from(noise_entry((key as usize).wrapping_add(col) & (NOISE_LEN - 1)));
    let (hits, n) = background_hits(key, g, &poisson_thresholds(BACKGROUND_HITS_PER_PIXEL * g.cols as f64));
    v += hits[..n].iter().filter(|h| h.0 == col).map(|h| h.1).sum::<u32>();
    let (cx, cy, r) = g.disk(frame_id);
    let (dx, dy) = (col as i64 - cx, row as i64 - cy);
    if dx * dx + dy * dy <= r * r {
        v += disk_hits(key, col, pair_hash(key, col), &poisson_thresholds(DISK_HITS_PER_PIXEL));
    }
    v.min(u32::from(g.clip)) as u16
}

/// Makes whole frames of the pattern quickly; equal, pixel for pixel, to [`pixel`].
#[derive(Debug, Clone)]
pub struct StemFrames {
    seed: u64,
    g: StemGeometry,
    /// The noise table followed by its first `cols` entries again, so that a row is one copy.
    noise: Vec<u16>,
    background: [u64; MAX_HITS],
    disk: [u64; MAX_HITS],
}

impl StemFrames {
    /// Prepares the tables for frames of geometry `g`.
    pub fn new(seed: u64, g: StemGeometry) -> Self {
        let noise = (0..NOISE_LEN + g.cols).map(|i| noise_entry(i & (NOISE_LEN - 1))).collect();
        Self {
            seed,
            g,
            noise,
            background: poisson_thresholds(BACKGROUND_HITS_PER_PIXEL * g.cols as f64),
            disk: poisson_thresholds(DISK_HITS_PER_PIXEL),
        }
    }

    /// The geometry these frames have.
    pub fn geometry(&self) -> StemGeometry {
        self.g
    }

    /// Writes frame `frame_id` into `out` (row-major, `rows × cols`; a shorter `out` gets the first rows).
    pub fn fill(&self, frame_id: u32, out: &mut [u16]) {
        let (cols, clip) = (self.g.cols, u32::from(self.g.clip));
        let (cx, cy, r) = self.g.disk(frame_id);
        for (row, px) in out.chunks_exact_mut(cols).enumerate().take(self.g.rows) {
            let key = row_key(self.seed, frame_id, row);
            let off = key as usize & (NOISE_LEN - 1);
            px.copy_from_slice(&self.noise[off..off + cols]);
            let (hits, n) = background_hits(key, &self.g, &self.background);
            for &(c, a) in &hits[..n] {
                px[c] = (u32::from(px[c]) + a).min(clip) as u16;
            }
            let dy = row as i64 - cy;
            if dy.abs() > r {
                continue;
            }
            let half = (r * r - dy * dy).isqrt();
            let first = (cx - half).max(0) as usize;
            let last = ((cx + half).min(cols as i64 - 1)).max(-1);
            if last < first as i64 {
                continue;
            }
            let mut h = 0;
            for (c, p) in px.iter_mut().enumerate().take(last as usize + 1).skip(first) {
                if c == first || c.is_multiple_of(2) {
                    h = pair_hash(key, c);
                }
                let add = disk_hits(key, c, h, &self.disk);
                if add > 0 {
                    *p = (u32::from(*p) + add).min(clip) as u16;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> StemGeometry {
        StemGeometry { rows: 1860, cols: 2048, clip: 0x0FFF }
    }

    #[test]
    fn frames_equal_the_pixel_formula() {
        // A small odd-sized geometry checked everywhere, a K2 IS frame on its disk rows and a sample elsewhere.
        let small = StemGeometry { rows: 67, cols: 93, clip: 0x0FFF };
        let maker = StemFrames::new(7, small);
        let mut f = vec![0u16; 67 * 93];
        for id in [0u32, 1, 4095, 4096, 123_456] {
            maker.fill(id, &mut f);
            for r in 0..67 {
                for c in 0..93 {
                    assert_eq!(f[r * 93 + c], pixel(7, &small, id, r, c), "frame {id} ({r}, {c})");
                }
            }
        }
        let g = geometry();
        let maker = StemFrames::new(0, g);
        let mut f = vec![0u16; g.rows * g.cols];
        for id in [3u32, 2000] {
            maker.fill(id, &mut f);
            let (_, cy, r) = g.disk(id);
            for row in (0..g.rows).filter(|&row| (row as i64 - cy).abs() <= r + 1 || row % 97 == 0) {
                for c in 0..g.cols {
                    assert_eq!(f[row * g.cols + c], pixel(0, &g, id, row, c), "frame {id} ({row}, {c})");
                }
            }
        }
    }

    #[test]
    fn statistics_look_like_a_stem_frame() {
        let g = geometry();
        let maker = StemFrames::new(0, g);
        let mut f = vec![0u16; g.rows * g.cols];
        maker.fill(100, &mut f);
        let (cx, cy, r) = g.disk(100);
        let (mut inside, mut inside_hit, mut outside, mut outside_hit) = (0usize, 0usize, 0usize, 0usize);
        for row in 0..g.rows {
            for c in 0..g.cols {
                let (dx, dy) = (c as i64 - cx, row as i64 - cy);
                let hit = f[row * g.cols + c] > DARK_OFFSET + 6;
                if dx * dx + dy * dy <= r * r {
                    inside += 1;
                    inside_hit += hit as usize;
                } else {
                    outside += 1;
                    outside_hit += hit as usize;
                }
            }
        }
        let (pin, pout) = (inside_hit as f64 / inside as f64, outside_hit as f64 / outside as f64);
        // P(at least one hit) = 1 − e^−0.05 ≈ 0.0488 in the disk; about 0.001 outside.
        assert!((0.045..0.053).contains(&pin), "disk hit fraction {pin}");
        assert!((0.0006..0.0014).contains(&pout), "background hit fraction {pout}");
        assert!(f.iter().all(|&p| (DARK_OFFSET - 6..=0x0FFF).contains(&p)));
        // The disk moves with the scan position.
        assert_ne!(g.disk(0), g.disk(1));
        assert_ne!(g.disk(0).1, g.disk(64).1);
        assert_eq!(g.disk(0), g.disk(SCAN_SIDE * SCAN_SIDE));
    }
}
