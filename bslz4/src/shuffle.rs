//! The bit transposition of one block ("bitshuffle"), as bitshuffle's `bshuf_trans_bit_elem` does it.
//!
//! A block of `n` elements (`n` a multiple of 8) of `s` bytes becomes `8·s` rows of `n/8` bytes: row `8·b + k`
//! holds bit `k` of byte `b` of every element, element `e` at bit `e % 8` of byte `e / 8`. Equal bits of
//! neighbouring pixels end up side by side, so the high bits of 12-bit pixels become long runs of zeros for LZ4.
//!
//! It is done in two steps: a byte transposition (byte `b` of every element into byte row `b`), then, per byte
//! row, a transposition of 8×8 bit matrices. The second step has a scalar version ([`Kernel::Scalar`]), an SSE2
//! one (`pmovmskb` to shuffle, 64-bit lane shifts to unshuffle; always available on x86_64) and an AVX2 one
//! (chosen at run time by [`Kernel::detect`]); [`reference_bitshuffle`] is the definition, bit by bit, that the
//! tests hold them all to.

#[cfg(target_arch = "x86_64")]
mod x86;

/// Which implementation of the bit transposition to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust, 8×8 bit matrices in a u64.
    Scalar,
    /// SSE2 (x86_64 only; every x86_64 CPU has it).
    Sse2,
    /// AVX2 (x86_64 CPUs that report it).
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") { Kernel::Avx2 } else { Kernel::Sse2 }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Kernel::Scalar
        }
    }

    /// Every kernel this CPU runs, for tests and benchmarks.
    pub fn available() -> Vec<Self> {
        let mut v = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            v.push(Kernel::Sse2);
            if std::is_x86_feature_detected!("avx2") {
                v.push(Kernel::Avx2);
            }
        }
        v
    }

    /// This kernel if the CPU runs it, else the fastest one it runs (so a stored choice is never unsound).
    fn checked(self) -> Self {
        if Kernel::available().contains(&self) { self } else { Kernel::detect() }
    }
}

/// The kernel [`bitshuffle`] and [`bitunshuffle`] use, detected once.
fn best() -> Kernel {
    static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *BEST.get_or_init(Kernel::detect)
}

/// Checks the shared preconditions and returns the number of elements.
fn elements(input: &[u8], out: &[u8], scratch: &[u8], elem_size: usize) -> usize {
    assert!(elem_size > 0, "element size 0");
    assert_eq!(input.len(), out.len(), "input and output lengths differ");
    assert!(scratch.len() >= input.len(), "scratch buffer shorter than the block");
    assert_eq!(input.len() % (8 * elem_size), 0, "a block is a multiple of 8 elements");
    input.len() / elem_size
}

/// Bit-transposes one block of `elem_size`-byte elements from `input` into `out` with the fastest kernel.
/// `scratch` is working space at least as long as `input`.
///
/// # Panics
/// If `elem_size` is 0, the lengths of `input` and `out` differ, `scratch` is shorter, or `input` is not a
/// multiple of 8 elements (callers derive all of these from a checked layout).
pub fn bitshuffle(input: &[u8], out: &mut [u8], scratch: &mut [u8], elem_size: usize) {
    bitshuffle_with(best(), input, out, scratch, elem_size);
}

/// [`bitshuffle`] with a chosen kernel (one the CPU does not run falls back to the detected one).
///
/// # Panics
/// As [`bitshuffle`].
pub fn bitshuffle_with(kernel: Kernel, input: &[u8], out: &mut [u8], scratch: &mut [u8], elem_size: usize) {
    let n = elements(input, out, scratch, elem_size);
    if n == 0 {
        return;
    }
    if elem_size == 1 {
        bits_to_rows(kernel, input, out);
        return;
    }
    let scratch = &mut scratch[..input.len()];
    byte_transpose(input, scratch, n, elem_size);
    for (src, dst) in scratch.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        bits_to_rows(kernel, src, dst);
    }
}

/// Inverts [`bitshuffle`]: `input` is a bit-transposed block, `out` gets the elements back.
///
/// # Panics
/// As [`bitshuffle`].
pub fn bitunshuffle(input: &[u8], out: &mut [u8], scratch: &mut [u8], elem_size: usize) {
    bitunshuffle_with(best(), input, out, scratch, elem_size);
}

/// [`bitunshuffle`] with a chosen kernel (one the CPU does not run falls back to the detected one).
///
/// # Panics
/// As [`bitshuffle`].
pub fn bitunshuffle_with(kernel: Kernel, input: &[u8], out: &mut [u8], scratch: &mut [u8], elem_size: usize) {
    let n = elements(input, out, scratch, elem_size);
    if n == 0 {
        return;
    }
    if elem_size == 1 {
        rows_to_bits(kernel, input, out);
        return;
    }
    let scratch = &mut scratch[..input.len()];
    for (src, dst) in input.chunks_exact(n).zip(scratch.chunks_exact_mut(n)) {
        rows_to_bits(kernel, src, dst);
    }
    byte_untranspose(scratch, out, n, elem_size);
}

/// The definition, one bit at a time: row `8·b + k`, bit `e` is bit `k` of byte `b` of element `e`. Slow; for
/// tests.
///
/// # Panics
/// If `elem_size` is 0 or `input` is not a whole number of groups of 8 elements.
pub fn reference_bitshuffle(input: &[u8], elem_size: usize) -> Vec<u8> {
    assert!(elem_size > 0 && input.len().is_multiple_of(8 * elem_size));
    let n = input.len() / elem_size;
    let mut out = vec![0u8; input.len()];
    for e in 0..n {
        for b in 0..elem_size {
            for k in 0..8 {
                let bit = (input[e * elem_size + b] >> k) & 1;
                out[(8 * b + k) * (n / 8) + e / 8] |= bit << (e % 8);
            }
        }
    }
    out
}

/// `dst[b·n + e] = src[e·s + b]`: byte `b` of every element into byte row `b`.
fn byte_transpose(src: &[u8], dst: &mut [u8], n: usize, s: usize) {
    match s {
        // The common pixel sizes get loops the compiler vectorises (16-bit pixels: 2 rows).
        2 => {
            let (lo, hi) = dst.split_at_mut(n);
            for ((e, l), h) in src.chunks_exact(2).zip(lo.iter_mut()).zip(hi.iter_mut()) {
                *l = e[0];
                *h = e[1];
            }
        }
        _ => {
            for (e, elem) in src.chunks_exact(s).enumerate() {
                for (b, &byte) in elem.iter().enumerate() {
                    dst[b * n + e] = byte;
                }
            }
        }
    }
}

/// Inverts [`byte_transpose`]: `dst[e·s + b] = src[b·n + e]`.
fn byte_untranspose(src: &[u8], dst: &mut [u8], n: usize, s: usize) {
    match s {
        2 => {
            let (lo, hi) = src.split_at(n);
            for ((e, &l), &h) in dst.chunks_exact_mut(2).zip(lo.iter()).zip(hi.iter()) {
                e[0] = l;
                e[1] = h;
            }
        }
        _ => {
            for (e, elem) in dst.chunks_exact_mut(s).enumerate() {
                for (b, byte) in elem.iter_mut().enumerate() {
                    *byte = src[b * n + e];
                }
            }
        }
    }
}

/// Transposes the 8×8 bit matrix in `x` (bit `8·i + j` to bit `8·j + i`), Hacker's Delight §7-3.
#[inline(always)]
pub(crate) fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// One byte row (`src`, `n` bytes, `n` a multiple of 8) into 8 bit rows of `n/8` bytes in `dst`: row `k`, bit
/// `j` is bit `k` of `src[j]`.
fn bits_to_rows(kernel: Kernel, src: &[u8], dst: &mut [u8]) {
    match kernel.checked() {
        Kernel::Scalar => bits_to_rows_scalar(src, dst, 0),
        #[cfg(target_arch = "x86_64")]
        Kernel::Sse2 => x86::bits_to_rows_sse2(src, dst),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::bits_to_rows_avx2(src, dst),
        #[cfg(not(target_arch = "x86_64"))]
        _ => bits_to_rows_scalar(src, dst, 0),
    }
}

/// [`bits_to_rows`] for the groups of 8 bytes from group `from` on.
pub(crate) fn bits_to_rows_scalar(src: &[u8], dst: &mut [u8], from: usize) {
    let row = src.len() / 8;
    for (g, bytes) in src.chunks_exact(8).enumerate().skip(from) {
        let mut x = [0u8; 8];
        x.copy_from_slice(bytes);
        let y = transpose8(u64::from_le_bytes(x)).to_le_bytes();
        for (k, &b) in y.iter().enumerate() {
            dst[k * row + g] = b;
        }
    }
}

/// Inverts [`bits_to_rows`].
fn rows_to_bits(kernel: Kernel, src: &[u8], dst: &mut [u8]) {
    match kernel.checked() {
        Kernel::Scalar => rows_to_bits_scalar(src, dst, 0),
        #[cfg(target_arch = "x86_64")]
        Kernel::Sse2 => x86::rows_to_bits_sse2(src, dst),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::rows_to_bits_avx2(src, dst),
        #[cfg(not(target_arch = "x86_64"))]
        _ => rows_to_bits_scalar(src, dst, 0),
    }
}

/// [`rows_to_bits`] for the groups of 8 bytes from group `from` on.
pub(crate) fn rows_to_bits_scalar(src: &[u8], dst: &mut [u8], from: usize) {
    let row = src.len() / 8;
    for (g, out) in dst.chunks_exact_mut(8).enumerate().skip(from) {
        let mut x = [0u8; 8];
        for (k, b) in x.iter_mut().enumerate() {
            *b = src[k * row + g];
        }
        out.copy_from_slice(&transpose8(u64::from_le_bytes(x)).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn transpose8_is_a_transpose() {
        for i in 0..8 {
            for j in 0..8 {
                assert_eq!(transpose8(1 << (8 * i + j)), 1 << (8 * j + i));
            }
        }
    }

    #[test]
    fn reference_layout() {
        // Element 0 of 16-bit elements = 0x8001: bit 0 of byte 0 (row 0) and bit 7 of byte 1 (row 15).
        let mut input = vec![0u8; 16];
        input[0] = 0x01;
        input[1] = 0x80;
        let out = reference_bitshuffle(&input, 2);
        let mut want = vec![0u8; 16];
        want[0] = 1;
        want[15] = 1;
        assert_eq!(out, want);
    }

    fn block() -> impl Strategy<Value = (usize, Vec<u8>)> {
        (prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(8)], 0usize..70).prop_flat_map(|(s, groups)| {
            (Just(s), proptest::collection::vec(any::<u8>(), groups * 8 * s..=groups * 8 * s))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn every_kernel_equals_the_reference((s, input) in block()) {
            let want = reference_bitshuffle(&input, s);
            for k in Kernel::available() {
                let mut out = vec![0u8; input.len()];
                let mut scratch = vec![0u8; input.len()];
                bitshuffle_with(k, &input, &mut out, &mut scratch, s);
                prop_assert_eq!(&out, &want, "{:?} shuffle", k);
                let mut back = vec![0u8; input.len()];
                bitunshuffle_with(k, &out, &mut back, &mut scratch, s);
                prop_assert_eq!(&back, &input, "{:?} unshuffle", k);
            }
        }
    }
}
