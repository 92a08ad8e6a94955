//! Pixel decoding and encoding, and placing a block's pixels into a frame.
//!
//! Two implementations produce identical results (property-tested): a portable one, and one using AVX2 chosen at
//! run time where the CPU has it. Placement writes each block row (16 or 32 pixels) at its row of the frame, a
//! 4 KiB stride apart for IS; that stride, not the arithmetic, is what costs.

use super::geometry::{Geometry, MAX_BAND, PixelEncoding};
use super::header::BlockHeader;

/// Unpacks 12-bit pixels, two per three bytes: `(f, m, l)` → `a = f | (m & 0x0F) << 8`, `b = (m >> 4) | l << 4`.
/// `src.len()` must be `3 * dst.len() / 2` (`dst.len()` even).
pub fn unpack12(src: &[u8], dst: &mut [u16]) {
    for (t, p) in src.chunks_exact(3).zip(dst.chunks_exact_mut(2)) {
        let (f, m, l) = (u16::from(t[0]), u16::from(t[1]), u16::from(t[2]));
        p[0] = f | (m & 0x0F) << 8;
        p[1] = (m >> 4) | l << 4;
    }
}

/// Packs pixels (low 12 bits of each) two per three bytes; the inverse of [`unpack12`].
pub fn pack12(src: &[u16], dst: &mut [u8]) {
    for (p, t) in src.chunks_exact(2).zip(dst.chunks_exact_mut(3)) {
        let (a, b) = (p[0] & 0x0FFF, p[1] & 0x0FFF);
        t[0] = a as u8;
        t[1] = ((a >> 8) as u8) | ((b as u8 & 0x0F) << 4);
        t[2] = (b >> 4) as u8;
    }
}

/// Decodes big-endian u16 pixels.
pub fn decode_u16be(src: &[u8], dst: &mut [u16]) {
    for (b, p) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *p = u16::from_be_bytes([b[0], b[1]]);
    }
}

/// Encodes pixels as big-endian u16; the inverse of [`decode_u16be`].
pub fn encode_u16be(src: &[u16], dst: &mut [u8]) {
    for (p, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&p.to_be_bytes());
    }
}

/// Why a block cannot be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// Sector index out of range.
    #[error("sector {0} out of range")]
    Sector(usize),
    /// Payload of the wrong size.
    #[error("payload of {found} bytes, expected {expected}")]
    Payload {
        /// Bytes given.
        found: usize,
        /// Bytes of the mode.
        expected: usize,
    },
    /// Frame buffer of the wrong size.
    #[error("frame buffer of {found} pixels, expected {expected}")]
    Frame {
        /// Pixels given.
        found: usize,
        /// Pixels of the mode.
        expected: usize,
    },
    /// Not one entry per block of the frame.
    #[error("{found} block entries, a frame has {expected}")]
    Blocks {
        /// Entries given.
        found: usize,
        /// Blocks per frame.
        expected: usize,
    },
    /// The block's position is outside its sector (the header was not validated).
    #[error("block position outside the sector")]
    Position,
}

/// Which implementation a [`Decoder`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2.
    Avx2,
}

/// Decodes blocks and places them into frames with the fastest implementation the CPU supports.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    imp: Implementation,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::detect()
    }
}

impl Decoder {
    /// The fastest implementation this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Self { imp: Implementation::Avx2 };
        }
        Self::portable()
    }

    /// The portable implementation.
    pub const fn portable() -> Self {
        Self { imp: Implementation::Portable }
    }

    /// Which implementation this decoder uses.
    pub const fn implementation(&self) -> Implementation {
        self.imp
    }

    /// Decodes `payload` (a block of geometry `g`, from sector `sector`, at the position in `h`) into `frame`, a
    /// row-major `frame_rows × frame_cols` buffer.
    pub fn place(
        &self,
        g: &Geometry,
        sector: usize,
        h: &BlockHeader,
        payload: &[u8],
        frame: &mut [u16],
    ) -> Result<(), PlaceError> {
        if sector >= g.sectors() {
            return Err(PlaceError::Sector(sector));
        }
        if payload.len() != g.payload_bytes() {
            return Err(PlaceError::Payload { found: payload.len(), expected: g.payload_bytes() });
        }
        if frame.len() != g.frame_pixels() {
            return Err(PlaceError::Frame { found: frame.len(), expected: g.frame_pixels() });
        }
        let (x, y) = (usize::from(h.x_start), usize::from(h.y_start));
        if x % g.block_width() != 0
            || x + g.block_width() > g.sector_width()
            || y % g.block_height() != 0
            || y + g.block_height() > g.sector_height()
        {
            return Err(PlaceError::Position);
        }
        self.place_checked(g, y * g.frame_cols() + sector * g.sector_width() + x, payload, frame);
        Ok(())
    }

    /// Places a block whose payload length, frame length and position (`origin`, its top-left pixel) are
    /// already checked.
    fn place_checked(&self, g: &Geometry, origin: usize, payload: &[u8], frame: &mut [u16]) {
        match self.imp {
            #[cfg(target_arch = "x86_64")]
            Implementation::Avx2 => {
                // SAFETY: this variant is only constructed after `is_x86_feature_detected!("avx2")`; the bounds
                // of payload and frame were checked above: the last row ends at
                // origin + (block_height-1)*frame_cols + block_width <= frame.len().
                unsafe { avx2::place(g, payload, frame, origin) }
            }
            _ => place_portable(g, payload, frame, origin),
        }
    }
}

/// Decodes a whole frame from its blocks, writing the frame row by row (sequential output).
///
/// `blocks[i]` is the payload of the block with [`Geometry::block_index`] `i`, or `None` if it is missing; the
/// pixels of a missing block are set to `fill`. This is the fast path: instead of 930 rows at a 4 KiB stride per
/// block, each frame row is written once, left to right, reading a row of every block of its band.
impl Decoder {
    /// See the type-level docs of this `impl`.
    pub fn decode_frame(
        &self,
        g: &Geometry,
        blocks: &[Option<&[u8]>],
        frame: &mut [u16],
        fill: u16,
    ) -> Result<(), PlaceError> {
        self.decode_frame_at(g, blocks, 0, frame, fill)
    }

    /// [`Decoder::decode_frame`] from whole datagrams: each present block is `skip` bytes (its header) and then
    /// its payload, so that the caller needs no array of payload slices (decoding a frame allocates nothing).
    pub fn decode_frame_at(
        &self,
        g: &Geometry,
        blocks: &[Option<&[u8]>],
        skip: usize,
        frame: &mut [u16],
        fill: u16,
    ) -> Result<(), PlaceError> {
        if blocks.len() != g.blocks_per_frame() {
            return Err(PlaceError::Blocks { found: blocks.len(), expected: g.blocks_per_frame() });
        }
        if frame.len() != g.frame_pixels() {
            return Err(PlaceError::Frame { found: frame.len(), expected: g.frame_pixels() });
        }
        if let Some(p) = blocks.iter().flatten().find(|p| p.len() != skip + g.payload_bytes()) {
            return Err(PlaceError::Payload { found: p.len().saturating_sub(skip), expected: g.payload_bytes() });
        }
        if g.encoding() == PixelEncoding::U16Be {
            // A Summit block row is 32 pixels, one whole 64-byte line: block by block writes full lines and is
            // faster than the row-major walk here (4.0 against 2.7 GiB/s in benches/decode).
            for s in 0..g.sectors() {
                for b in 0..g.blocks_per_sector() {
                    let (x, y) = g.block_position(b);
                    let origin = y * g.frame_cols() + s * g.sector_width() + x;
                    match strip(blocks[g.block_index(s, x, y)], skip) {
                        Some(p) => self.place_checked(g, origin, p, frame),
                        None => {
                            for r in 0..g.block_height() {
                                frame[origin + r * g.frame_cols()..][..g.block_width()].fill(fill);
                            }
                        }
                    }
                }
            }
            return Ok(());
        }
        let across = g.blocks_across();
        let row_bytes = g.row_bytes();
        // Blocks of one band in frame column order: sector 0 x 0, x 16, ..., sector 7 x 240.
        // On the stack: decoding a frame allocates nothing (16 blocks across × 8 sectors in IS mode);
        // `Geometry::new` guarantees that a band fits.
        if across * g.sectors() > MAX_BAND {
            return Err(PlaceError::Blocks { found: across * g.sectors(), expected: MAX_BAND });
        }
        let mut band_store: [Option<&[u8]>; MAX_BAND] = [None; MAX_BAND];
        let band = &mut band_store[..across * g.sectors()];
        for by in 0..g.blocks_down() {
            for s in 0..g.sectors() {
                for bx in 0..across {
                    band[s * across + bx] =
                        strip(blocks[g.block_index(s, bx * g.block_width(), by * g.block_height())], skip);
                }
            }
            let band_rows = &mut frame[by * g.block_height() * g.frame_cols()..][..g.block_height() * g.frame_cols()];
            match (self.imp, g.encoding()) {
                #[cfg(target_arch = "x86_64")]
                (Implementation::Avx2, PixelEncoding::Packed12) if g.block_width() == 16 => {
                    // SAFETY: AVX2 detected at construction; every present payload is payload_bytes long (checked
                    // above) = block_height rows of 24 bytes; band_rows holds block_height full frame rows, and
                    // band.len() * 16 == frame_cols (across * sectors blocks of 16 columns).
                    unsafe { avx2::band12(g, band, band_rows, fill) }
                }
                _ => {
                    for r in 0..g.block_height() {
                        let row = &mut band_rows[r * g.frame_cols()..][..g.frame_cols()];
                        for (out, blk) in row.chunks_exact_mut(g.block_width()).zip(band.iter()) {
                            match blk {
                                None => out.fill(fill),
                                Some(p) => self.decode_row(g, &p[r * row_bytes..(r + 1) * row_bytes], out),
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes one block row (`block_width` pixels).
    #[inline]
    fn decode_row(&self, g: &Geometry, src: &[u8], out: &mut [u16]) {
        match (self.imp, g.encoding()) {
            #[cfg(target_arch = "x86_64")]
            (Implementation::Avx2, PixelEncoding::Packed12) if out.len() == 16 && src.len() == 24 => {
                // SAFETY: AVX2 was detected when this variant was made; lengths checked in the guard.
                unsafe { avx2::row12(src, out) }
            }
            #[cfg(target_arch = "x86_64")]
            (Implementation::Avx2, PixelEncoding::U16Be)
                if out.len().is_multiple_of(16) && src.len() == out.len() * 2 =>
            {
                // SAFETY: as above.
                unsafe { avx2::row16be(src, out) }
            }
            (_, PixelEncoding::Packed12) => unpack12(src, out),
            (_, PixelEncoding::U16Be) => decode_u16be(src, out),
        }
    }
}

/// The payload of a datagram whose header is `skip` bytes (its length was checked).
#[inline]
fn strip(b: Option<&[u8]>, skip: usize) -> Option<&[u8]> {
    b.map(|p| &p[skip..])
}

fn place_portable(g: &Geometry, payload: &[u8], frame: &mut [u16], origin: usize) {
    let cols = g.frame_cols();
    let w = g.block_width();
    match g.encoding() {
        PixelEncoding::Packed12 => {
            for (r, src) in payload.chunks_exact(w * 3 / 2).enumerate() {
                let at = origin + r * cols;
                unpack12(src, &mut frame[at..at + w]);
            }
        }
        PixelEncoding::U16Be => {
            for (r, src) in payload.chunks_exact(w * 2).enumerate() {
                let at = origin + r * cols;
                decode_u16be(src, &mut frame[at..at + w]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    const SHUF12: [i8; 32] = [
        0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10, 10, 11, //
        4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11, 12, 13, 14, 14, 15,
    ];
    const SWAP16: [i8; 32] = [
        1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14, //
        1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14,
    ];

    /// Decodes one band of IS blocks (`band[i]`: the block at frame column `16 i`) into its `block_height` rows.
    ///
    /// # Safety
    /// AVX2 must be available; each present block holds `block_height * 24` bytes; `rows` holds
    /// `block_height * frame_cols` pixels and `band.len() * 16 == frame_cols`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn band12(g: &Geometry, band: &[Option<&[u8]>], rows: &mut [u16], fill: u16) {
        const AHEAD: usize = 16; // rows of each source stream prefetched ahead
        let cols = g.frame_cols();
        let h = g.block_height();
        // SAFETY: (whole body) row r of block i reads bytes r*24 .. r*24+24 of a block of h*24 bytes, and writes
        // pixels r*cols + 16 i .. +16 of rows, which holds h*cols pixels. Prefetches are hints and never fault.
        unsafe {
            let shuf = _mm256_loadu_si256(SHUF12.as_ptr().cast());
            let mask = _mm256_set1_epi16(0x0FFF);
            let fillv = _mm256_set1_epi16(fill as i16);
            let out = rows.as_mut_ptr();
            // A frame is written once and read much later (by the writer's DMA or a consumer), after megabytes
            // of other frames: streaming stores skip reading the destination lines in before overwriting them and
            // leave the cache to the blocks being read, which is what puts this above memcpy. They need 32-byte
            // alignment, which frame-ring slots (page aligned) always have.
            let stream = (out as usize).is_multiple_of(32) && cols.is_multiple_of(16);
            for r in 0..h {
                let dst = out.add(r * cols);
                for (i, blk) in band.iter().enumerate() {
                    let d = dst.add(i * 16).cast::<__m256i>();
                    match blk {
                        None if stream => _mm256_stream_si256(d, fillv),
                        None => _mm256_storeu_si256(d, fillv),
                        Some(p) => {
                            let s = p.as_ptr().add(r * 24);
                            if r + AHEAD < h {
                                _mm_prefetch::<_MM_HINT_T0>(s.add(AHEAD * 24).cast());
                            }
                            let lo = _mm_loadu_si128(s.cast());
                            let hi = _mm_loadu_si128(s.add(8).cast());
                            let v = _mm256_shuffle_epi8(_mm256_set_m128i(hi, lo), shuf);
                            let px =
                                _mm256_blend_epi16::<0b1010_1010>(_mm256_and_si256(v, mask), _mm256_srli_epi16::<4>(v));
                            if stream {
                                _mm256_stream_si256(d, px);
                            } else {
                                _mm256_storeu_si256(d, px);
                            }
                        }
                    }
                }
            }
            // Streaming stores are weakly ordered: make them globally visible before the caller publishes the
            // frame with its Release store.
            _mm_sfence();
        }
    }

    /// 24 packed bytes → 16 pixels.
    ///
    /// # Safety
    /// AVX2 must be available; `src.len() == 24`, `out.len() == 16`.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn row12(src: &[u8], out: &mut [u16]) {
        // SAFETY: lengths guaranteed by the caller: loads read bytes 0..16 and 8..24, the store writes 32 bytes.
        unsafe {
            let s = src.as_ptr();
            let lo = _mm_loadu_si128(s.cast());
            let hi = _mm_loadu_si128(s.add(8).cast());
            let v = _mm256_shuffle_epi8(_mm256_set_m128i(hi, lo), _mm256_loadu_si256(SHUF12.as_ptr().cast()));
            let even = _mm256_and_si256(v, _mm256_set1_epi16(0x0FFF));
            let odd = _mm256_srli_epi16::<4>(v);
            _mm256_storeu_si256(out.as_mut_ptr().cast(), _mm256_blend_epi16::<0b1010_1010>(even, odd));
        }
    }

    /// Big-endian u16 bytes → pixels, 16 at a time.
    ///
    /// # Safety
    /// AVX2 must be available; `out.len() % 16 == 0`, `src.len() == 2 * out.len()`.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn row16be(src: &[u8], out: &mut [u16]) {
        // SAFETY: lengths guaranteed by the caller; each step reads and writes 32 bytes in range.
        unsafe {
            let swap = _mm256_loadu_si256(SWAP16.as_ptr().cast());
            for c in (0..out.len()).step_by(16) {
                let v = _mm256_loadu_si256(src.as_ptr().add(c * 2).cast());
                _mm256_storeu_si256(out.as_mut_ptr().add(c).cast(), _mm256_shuffle_epi8(v, swap));
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2; `payload` must hold `block_height` rows of the mode's row size and `frame` must
    /// hold `origin + (block_height - 1) * frame_cols + block_width` pixels.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn place(g: &Geometry, payload: &[u8], frame: &mut [u16], origin: usize) {
        let cols = g.frame_cols();
        let src = payload.as_ptr();
        // SAFETY: (whole body) every pointer below stays within the ranges the caller guarantees: row r reads
        // `row_bytes` bytes at src + r*row_bytes and writes `block_width` pixels at origin + r*cols.
        unsafe {
            let dst = frame.as_mut_ptr().add(origin);
            match g.encoding() {
                PixelEncoding::Packed12 if g.block_width() == 16 => {
                    // Per 128-bit lane: 12 bytes = 4 triplets → 8 pixels. Even pixel 2k takes bytes (3k, 3k+1) and
                    // keeps the low 12 bits; odd pixel 2k+1 takes bytes (3k+1, 3k+2) and shifts right by 4.
                    // Lane 0 reads bytes 0..16 of the row; lane 1 reads bytes 8..24, so its triplets start at 4.
                    let shuf = _mm256_setr_epi8(
                        0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10, 10, 11, //
                        4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11, 12, 13, 14, 14, 15,
                    );
                    let mask = _mm256_set1_epi16(0x0FFF);
                    for r in 0..g.block_height() {
                        let s = src.add(r * 24);
                        let lo = _mm_loadu_si128(s.cast());
                        let hi = _mm_loadu_si128(s.add(8).cast());
                        let v = _mm256_shuffle_epi8(_mm256_set_m128i(hi, lo), shuf);
                        let even = _mm256_and_si256(v, mask);
                        let odd = _mm256_srli_epi16::<4>(v);
                        let px = _mm256_blend_epi16::<0b1010_1010>(even, odd);
                        _mm256_storeu_si256(dst.add(r * cols).cast(), px);
                    }
                }
                PixelEncoding::U16Be if g.block_width().is_multiple_of(16) => {
                    let swap = _mm256_setr_epi8(
                        1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14, //
                        1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14,
                    );
                    let row_bytes = g.block_width() * 2;
                    for r in 0..g.block_height() {
                        let s = src.add(r * row_bytes);
                        let d = dst.add(r * cols);
                        for c in (0..g.block_width()).step_by(16) {
                            let v = _mm256_loadu_si256(s.add(c * 2).cast());
                            _mm256_storeu_si256(d.add(c).cast(), _mm256_shuffle_epi8(v, swap));
                        }
                    }
                }
                _ => place_portable(g, payload, frame, origin),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k2::{IS_GEOMETRY, SUMMIT_GEOMETRY};
    use proptest::prelude::*;

    #[test]
    fn test_vector() {
        let mut px = [0u16; 2];
        unpack12(&[0xBC, 0xFA, 0xDE], &mut px);
        assert_eq!(px, [0xABC, 0xDEF]);
        let mut b = [0u8; 3];
        pack12(&[0xABC, 0xDEF], &mut b);
        assert_eq!(b, [0xBC, 0xFA, 0xDE]);
    }

    proptest! {
        #[test]
        fn pack12_round_trips(px in prop::collection::vec(0u16..0x1000, 0..64).prop_map(|mut v| { v.truncate(v.len() & !1); v })) {
            let mut b = vec![0u8; px.len() * 3 / 2];
            pack12(&px, &mut b);
            let mut back = vec![0u16; px.len()];
            unpack12(&b, &mut back);
            prop_assert_eq!(back, px);
        }

        #[test]
        fn u16be_round_trips(px in prop::collection::vec(any::<u16>(), 0..64)) {
            let mut b = vec![0u8; px.len() * 2];
            encode_u16be(&px, &mut b);
            let mut back = vec![0u16; px.len()];
            decode_u16be(&b, &mut back);
            prop_assert_eq!(back, px);
        }

        #[test]
        fn fast_and_portable_place_identically(
            summit: bool,
            sector in 0usize..8,
            bi in 0usize..80,
            seed in any::<u64>(),
        ) {
            let g = if summit { SUMMIT_GEOMETRY } else { IS_GEOMETRY };
            let (x, y) = g.block_position(bi % g.blocks_per_sector());
            let h = BlockHeader::for_block(&g, 0, 0, x, y, 0);
            let mut s = seed | 1;
            let payload: Vec<u8> = (0..g.payload_bytes()).map(|_| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s as u8 }).collect();
            let mut a = vec![0x5555u16; g.frame_pixels()];
            let mut b = a.clone();
            Decoder::portable().place(&g, sector, &h, &payload, &mut a).unwrap();
            Decoder::detect().place(&g, sector, &h, &payload, &mut b).unwrap();
            prop_assert!(a == b, "implementations differ ({:?})", Decoder::detect().implementation());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        #[test]
        fn whole_frame_decode_equals_block_placement(summit: bool, missing in prop::collection::vec(0usize..640, 0..5)) {
            let g = if summit { SUMMIT_GEOMETRY } else { IS_GEOMETRY };
            let n = g.blocks_per_frame();
            let payloads: Vec<Vec<u8>> = (0..n).map(|i| (0..g.payload_bytes()).map(|k| (k * 7 + i * 13) as u8).collect()).collect();
            let mut want = vec![0xFFFFu16; g.frame_pixels()];
            let mut refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
            for m in &missing { refs[m % n] = None; }
            for s in 0..g.sectors() {
                for b in 0..g.blocks_per_sector() {
                    let (x, y) = g.block_position(b);
                    if let Some(p) = refs[g.block_index(s, x, y)] {
                        let h = BlockHeader::for_block(&g, 0, 0, x, y, 0);
                        Decoder::portable().place(&g, s, &h, p, &mut want).unwrap();
                    }
                }
            }
            for d in [Decoder::portable(), Decoder::detect()] {
                let mut got = vec![0u16; g.frame_pixels()];
                d.decode_frame(&g, &refs, &mut got, 0xFFFF).unwrap();
                prop_assert!(got == want, "{:?} differs", d.implementation());
            }
        }
    }

    /// The whole-frame path streams its stores only into a 32-byte aligned frame, as a frame-ring slot is; a Vec
    /// from malloc usually is not, so this test aligns one to exercise that path too.
    #[test]
    fn whole_frame_decode_into_an_aligned_frame() {
        let g = IS_GEOMETRY;
        let n = g.blocks_per_frame();
        let payloads: Vec<Vec<u8>> =
            (0..n).map(|i| (0..g.payload_bytes()).map(|k| (k * 31 + i * 7) as u8).collect()).collect();
        let mut refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
        refs[5] = None;
        let mut want = vec![0u16; g.frame_pixels()];
        Decoder::portable().decode_frame(&g, &refs, &mut want, 0xABC).unwrap();
        let mut store = vec![0u16; g.frame_pixels() + 32];
        for skew in [0usize, 1, 8] {
            let at = store.as_ptr().align_offset(32) + skew;
            let frame = &mut store[at..at + g.frame_pixels()];
            frame.fill(0x5555);
            Decoder::detect().decode_frame(&g, &refs, frame, 0xABC).unwrap();
            assert!(*frame == *want, "skew {skew}: {:?} differs", Decoder::detect().implementation());
        }
    }

    #[test]
    fn place_checks_its_inputs() {
        let g = IS_GEOMETRY;
        let h = BlockHeader::for_block(&g, 0, 0, 0, 0, 0);
        let mut f = vec![0u16; g.frame_pixels()];
        let p = vec![0u8; g.payload_bytes()];
        let d = Decoder::detect();
        assert_eq!(d.place(&g, 8, &h, &p, &mut f), Err(PlaceError::Sector(8)));
        assert!(matches!(d.place(&g, 0, &h, &p[1..], &mut f), Err(PlaceError::Payload { .. })));
        assert!(matches!(d.place(&g, 0, &h, &p, &mut f[1..]), Err(PlaceError::Frame { .. })));
        let mut bad = h;
        bad.x_start = 250;
        assert_eq!(d.place(&g, 0, &bad, &p, &mut f), Err(PlaceError::Position));
    }
}
