//! Decode: whole IS frames, their blocks in camera order as the receiver leaves them in the block ring, decoded
//! and placed into the frame layout, beside `memcpy` of the same output bytes.
//!
//! Both rotate over as many frames as a default frame ring holds (16: 92 MB of datagrams, 122 MB of frames),
//! far more than the last-level cache, so that both run at memory speed as in the pipeline, where every frame
//! is new.

use std::hint::black_box;
use std::time::Instant;

use detector::k2;
use detector::k2::decode::Decoder;
use detector::k2::geometry::{HEADER_BYTES, SECTORS};
use detector::k2::header::BlockHeader;

/// Output GB/s of each implementation, median over the passes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeFigures {
    /// `memcpy` of decoded frames into the frame buffers.
    pub memcpy_gbs: f64,
    /// `Decoder::decode_frame` (the assembler's path) with the fastest implementation.
    pub decode_gbs: f64,
    /// A copy with streaming stores (AVX2), where the CPU has it: the faster way to move the same bytes, and the
    /// real ceiling for a kernel that writes a frame once.
    pub stream_copy_gbs: Option<f64>,
    /// Block-by-block placement (930 rows at a 4 KiB stride per block), for comparison.
    pub place_gbs: f64,
}

/// Measures over `frames` frames in rotation, `passes` passes each.
pub fn measure(frames: usize, passes: usize) -> anyhow::Result<DecodeFigures> {
    let g = k2::IS_GEOMETRY;
    let decoder = Decoder::detect();
    let stride = (g.block_bytes() + 64).div_ceil(64) * 64; // as PipelineSizes::datagram_stride lays datagrams out
    let per_frame = g.blocks_per_frame();
    let expected = detector::pattern::expected_frame(&*k2::IS, 3);
    // One frame's datagrams in camera order (block by block, each in all 8 sectors), repeated for every frame.
    let mut one = vec![0u8; per_frame * stride];
    // Per datagram in camera order: its sector, its header and its block index in the frame.
    let mut order: Vec<(usize, BlockHeader, usize)> = Vec::with_capacity(per_frame);
    let mut px = vec![0u16; g.block_width() * g.block_height()];
    for b in 0..g.blocks_per_sector() {
        let (x, y) = g.block_position(b);
        for s in 0..SECTORS {
            let n = order.len();
            let dgram = &mut one[n * stride..][..g.block_bytes()];
            let h = BlockHeader::for_block(&g, 3, 0, x, y, 0);
            let mut hdr = [0u8; HEADER_BYTES];
            h.encode(&mut hdr);
            dgram[..HEADER_BYTES].copy_from_slice(&hdr);
            for r in 0..g.block_height() {
                let at = (y + r) * g.frame_cols() + s * g.sector_width() + x;
                px[r * g.block_width()..][..g.block_width()].copy_from_slice(&expected[at..at + g.block_width()]);
            }
            detector::k2::decode::pack12(&px, &mut dgram[HEADER_BYTES..]);
            order.push((s, h, g.block_index(s, x, y)));
        }
    }
    let blocks: Vec<u8> = one.repeat(frames);
    let mut out: Vec<crate::PageBuffer> = (0..frames).map(|_| crate::PageBuffer::new(g.frame_bytes())).collect();
    let src: Vec<crate::PageBuffer> = (0..frames)
        .map(|_| {
            let mut b = crate::PageBuffer::new(g.frame_bytes());
            b.copy_from_slice(&expected);
            b
        })
        .collect();
    // The payload references of each frame, by block index, as the assembler hands them to the decoder.
    let refs: Vec<Vec<Option<&[u8]>>> = (0..frames)
        .map(|f| {
            let mut r = vec![None; per_frame];
            for (i, &(_, _, bi)) in order.iter().enumerate() {
                let at = (f * per_frame + i) * stride + HEADER_BYTES;
                r[bi] = Some(&blocks[at..at + g.payload_bytes()]);
            }
            r
        })
        .collect();

    let bytes = (frames * g.frame_bytes()) as f64;
    let (mut cp, mut dec, mut pl, mut nt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let has_avx2 = cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2");
    for _ in 0..passes {
        let t = Instant::now();
        for (o, s) in out.iter_mut().zip(&src) {
            o.copy_from_slice(s);
            black_box(&o);
        }
        cp.push(bytes / t.elapsed().as_secs_f64() / 1e9);

        if has_avx2 {
            let t = Instant::now();
            for (o, s) in out.iter_mut().zip(&src) {
                stream_copy(s, o);
                black_box(&o);
            }
            nt.push(bytes / t.elapsed().as_secs_f64() / 1e9);
        }

        let t = Instant::now();
        for (o, r) in out.iter_mut().zip(&refs) {
            decoder.decode_frame(&g, r, o, 0)?;
            black_box(&o);
        }
        dec.push(bytes / t.elapsed().as_secs_f64() / 1e9);

        let t = Instant::now();
        for (f, o) in out.iter_mut().enumerate() {
            for (i, (s, h, _)) in order.iter().enumerate() {
                let at = (f * per_frame + i) * stride + HEADER_BYTES;
                decoder.place(&g, *s, h, &blocks[at..at + g.payload_bytes()], o)?;
            }
            black_box(&o);
        }
        pl.push(bytes / t.elapsed().as_secs_f64() / 1e9);
    }
    anyhow::ensure!(*out[0] == *expected, "decoded frame differs from the pattern");
    Ok(DecodeFigures {
        memcpy_gbs: crate::median(&mut cp),
        decode_gbs: crate::median(&mut dec),
        stream_copy_gbs: has_avx2.then(|| crate::median(&mut nt)),
        place_gbs: crate::median(&mut pl),
    })
}

/// Copies `src` to `dst` (same length, both 32-byte aligned page buffers) with AVX2 streaming stores.
fn stream_copy(src: &[u16], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx2")]
        unsafe fn copy(src: &[u16], dst: &mut [u16]) {
            let n = src.len().min(dst.len()) / 16 * 16;
            // SAFETY: both buffers are page aligned (PageBuffer) and hold at least n u16; each step reads and
            // writes 32 bytes below n.
            unsafe {
                for i in (0..n).step_by(16) {
                    let v = _mm256_load_si256(src.as_ptr().add(i).cast());
                    _mm256_stream_si256(dst.as_mut_ptr().add(i).cast(), v);
                }
                _mm_sfence();
            }
            let tail = src.len().min(dst.len());
            dst[n..tail].copy_from_slice(&src[n..tail]);
        }
        // SAFETY: only called when AVX2 was detected (`has_avx2`).
        unsafe { copy(src, dst) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}
