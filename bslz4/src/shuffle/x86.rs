//! SSE2 and AVX2 versions of the per-byte-row bit transposition.
//!
//! Shuffling: `pmovmskb` gathers the top bit of 16 (32) bytes into a mask; shifting every byte left by one and
//! repeating gives the rows for bits 7 down to 0. Unshuffling: 16 (32) bytes of each of the 8 bit rows are
//! interleaved with unpack instructions into 64-bit lanes that each hold one 8×8 bit matrix, which the shifts of
//! [`super::transpose8`] transpose two (four) at a time. Groups of 8 bytes left over go through the scalar code.

use std::arch::x86_64::*;

use super::{bits_to_rows_scalar, rows_to_bits_scalar};

/// [`super::bits_to_rows`] with SSE2, 16 bytes per step.
pub(super) fn bits_to_rows_sse2(src: &[u8], dst: &mut [u8]) {
    // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 CPU runs it.
    unsafe { bits_to_rows_sse2_inner(src, dst) }
}

#[target_feature(enable = "sse2")]
fn bits_to_rows_sse2_inner(src: &[u8], dst: &mut [u8]) {
    let row = src.len() / 8;
    let steps = src.len() / 16;
    for i in 0..steps {
        // SAFETY: i < src.len() / 16, so the 16 bytes at 16·i are inside `src`; loadu has no alignment need.
        let mut v = unsafe { _mm_loadu_si128(src.as_ptr().add(16 * i).cast()) };
        for k in (0..8).rev() {
            let mask = _mm_movemask_epi8(v) as u16;
            dst[k * row + 2 * i..k * row + 2 * i + 2].copy_from_slice(&mask.to_le_bytes());
            v = _mm_add_epi8(v, v);
        }
    }
    bits_to_rows_scalar(src, dst, 2 * steps);
}

/// [`super::bits_to_rows`] with AVX2, 32 bytes per step.
pub(super) fn bits_to_rows_avx2(src: &[u8], dst: &mut [u8]) {
    // SAFETY: this kernel is only chosen when `is_x86_feature_detected!("avx2")` said yes (Kernel::checked).
    unsafe { bits_to_rows_avx2_inner(src, dst) }
}

#[target_feature(enable = "avx2")]
fn bits_to_rows_avx2_inner(src: &[u8], dst: &mut [u8]) {
    let row = src.len() / 8;
    let steps = src.len() / 32;
    for i in 0..steps {
        // SAFETY: i < src.len() / 32, so the 32 bytes at 32·i are inside `src`; loadu has no alignment need.
        let mut v = unsafe { _mm256_loadu_si256(src.as_ptr().add(32 * i).cast()) };
        for k in (0..8).rev() {
            let mask = _mm256_movemask_epi8(v) as u32;
            dst[k * row + 4 * i..k * row + 4 * i + 4].copy_from_slice(&mask.to_le_bytes());
            v = _mm256_add_epi8(v, v);
        }
    }
    bits_to_rows_scalar(src, dst, 4 * steps);
}

/// Transposes the 8×8 bit matrices in both 64-bit lanes of `x`.
#[inline]
#[target_feature(enable = "sse2")]
fn transpose8_x2(x: __m128i) -> __m128i {
    let t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64::<7>(x)), _mm_set1_epi64x(0x00AA_00AA_00AA_00AA));
    let x = _mm_xor_si128(_mm_xor_si128(x, t), _mm_slli_epi64::<7>(t));
    let t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64::<14>(x)), _mm_set1_epi64x(0x0000_CCCC_0000_CCCC));
    let x = _mm_xor_si128(_mm_xor_si128(x, t), _mm_slli_epi64::<14>(t));
    let t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64::<28>(x)), _mm_set1_epi64x(0x0000_0000_F0F0_F0F0));
    _mm_xor_si128(_mm_xor_si128(x, t), _mm_slli_epi64::<28>(t))
}

/// [`super::rows_to_bits`] with SSE2: 16 bytes of each of the 8 rows (128 output bytes) per step.
pub(super) fn rows_to_bits_sse2(src: &[u8], dst: &mut [u8]) {
    // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 CPU runs it.
    unsafe { rows_to_bits_sse2_inner(src, dst) }
}

#[target_feature(enable = "sse2")]
fn rows_to_bits_sse2_inner(src: &[u8], dst: &mut [u8]) {
    let row = src.len() / 8;
    let steps = row / 16;
    for i in 0..steps {
        let mut r = [_mm_setzero_si128(); 8];
        for (k, v) in r.iter_mut().enumerate() {
            // SAFETY: row k spans src[k·row..(k+1)·row] and 16·i + 16 <= row, so the load is inside `src`.
            *v = unsafe { _mm_loadu_si128(src.as_ptr().add(k * row + 16 * i).cast()) };
        }
        // Interleave bytes, then pairs, then quads: each 64-bit lane ends as bytes 0..8 = rows 0..8 of one group.
        let a = [_mm_unpacklo_epi8(r[0], r[1]), _mm_unpackhi_epi8(r[0], r[1])];
        let b = [_mm_unpacklo_epi8(r[2], r[3]), _mm_unpackhi_epi8(r[2], r[3])];
        let c = [_mm_unpacklo_epi8(r[4], r[5]), _mm_unpackhi_epi8(r[4], r[5])];
        let d = [_mm_unpacklo_epi8(r[6], r[7]), _mm_unpackhi_epi8(r[6], r[7])];
        let e = [
            _mm_unpacklo_epi16(a[0], b[0]),
            _mm_unpackhi_epi16(a[0], b[0]),
            _mm_unpacklo_epi16(a[1], b[1]),
            _mm_unpackhi_epi16(a[1], b[1]),
        ];
        let f = [
            _mm_unpacklo_epi16(c[0], d[0]),
            _mm_unpackhi_epi16(c[0], d[0]),
            _mm_unpacklo_epi16(c[1], d[1]),
            _mm_unpackhi_epi16(c[1], d[1]),
        ];
        let out = &mut dst[128 * i..128 * i + 128];
        for j in 0..4 {
            let lo = transpose8_x2(_mm_unpacklo_epi32(e[j], f[j]));
            let hi = transpose8_x2(_mm_unpackhi_epi32(e[j], f[j]));
            // SAFETY: `out` is 128 bytes and 32·j + 32 <= 128; storeu has no alignment need.
            unsafe {
                _mm_storeu_si128(out.as_mut_ptr().add(32 * j).cast(), lo);
                _mm_storeu_si128(out.as_mut_ptr().add(32 * j + 16).cast(), hi);
            }
        }
    }
    rows_to_bits_scalar(src, dst, 16 * steps);
}

/// [`super::rows_to_bits`] with AVX2.
pub(super) fn rows_to_bits_avx2(src: &[u8], dst: &mut [u8]) {
    // SAFETY: this kernel is only chosen when `is_x86_feature_detected!("avx2")` said yes (Kernel::checked).
    unsafe { rows_to_bits_avx2_inner(src, dst) }
}

/// Transposes the 8×8 bit matrices in all four 64-bit lanes of `x`.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8_x4(x: __m256i) -> __m256i {
    let t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64::<7>(x)), _mm256_set1_epi64x(0x00AA_00AA_00AA_00AA));
    let x = _mm256_xor_si256(_mm256_xor_si256(x, t), _mm256_slli_epi64::<7>(t));
    let t =
        _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64::<14>(x)), _mm256_set1_epi64x(0x0000_CCCC_0000_CCCC));
    let x = _mm256_xor_si256(_mm256_xor_si256(x, t), _mm256_slli_epi64::<14>(t));
    let t =
        _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64::<28>(x)), _mm256_set1_epi64x(0x0000_0000_F0F0_F0F0));
    _mm256_xor_si256(_mm256_xor_si256(x, t), _mm256_slli_epi64::<28>(t))
}

/// 32 bytes of each of the 8 rows (256 output bytes) per step. The unpacks work within 128-bit lanes, so the low
/// lane makes output bytes 0..128 and the high lane bytes 128..256, as two SSE2 steps side by side.
#[target_feature(enable = "avx2")]
fn rows_to_bits_avx2_inner(src: &[u8], dst: &mut [u8]) {
    let row = src.len() / 8;
    let steps = row / 32;
    for i in 0..steps {
        let mut r = [_mm256_setzero_si256(); 8];
        for (k, v) in r.iter_mut().enumerate() {
            // SAFETY: row k spans src[k·row..(k+1)·row] and 32·i + 32 <= row, so the load is inside `src`.
            *v = unsafe { _mm256_loadu_si256(src.as_ptr().add(k * row + 32 * i).cast()) };
        }
        let a = [_mm256_unpacklo_epi8(r[0], r[1]), _mm256_unpackhi_epi8(r[0], r[1])];
        let b = [_mm256_unpacklo_epi8(r[2], r[3]), _mm256_unpackhi_epi8(r[2], r[3])];
        let c = [_mm256_unpacklo_epi8(r[4], r[5]), _mm256_unpackhi_epi8(r[4], r[5])];
        let d = [_mm256_unpacklo_epi8(r[6], r[7]), _mm256_unpackhi_epi8(r[6], r[7])];
        let e = [
            _mm256_unpacklo_epi16(a[0], b[0]),
            _mm256_unpackhi_epi16(a[0], b[0]),
            _mm256_unpacklo_epi16(a[1], b[1]),
            _mm256_unpackhi_epi16(a[1], b[1]),
        ];
        let f = [
            _mm256_unpacklo_epi16(c[0], d[0]),
            _mm256_unpackhi_epi16(c[0], d[0]),
            _mm256_unpacklo_epi16(c[1], d[1]),
            _mm256_unpackhi_epi16(c[1], d[1]),
        ];
        let out = &mut dst[256 * i..256 * i + 256];
        for j in 0..4 {
            let lo = transpose8_x4(_mm256_unpacklo_epi32(e[j], f[j]));
            let hi = transpose8_x4(_mm256_unpackhi_epi32(e[j], f[j]));
            // Low lanes: output bytes 32·j..32·j+32; high lanes: the same 128 bytes further on.
            let first = _mm256_permute2x128_si256::<0x20>(lo, hi);
            let second = _mm256_permute2x128_si256::<0x31>(lo, hi);
            // SAFETY: `out` is 256 bytes and 128 + 32·j + 32 <= 256; storeu has no alignment need.
            unsafe {
                _mm256_storeu_si256(out.as_mut_ptr().add(32 * j).cast(), first);
                _mm256_storeu_si256(out.as_mut_ptr().add(128 + 32 * j).cast(), second);
            }
        }
    }
    rows_to_bits_scalar(src, dst, 32 * steps);
}
