//! Unit tests of the chunk format; the crate's `interop` integration test checks it against hdf5plugin itself.

use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn to_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|p| p.to_le_bytes()).collect()
}

#[test]
fn filter_parameters_are_hdf5plugins() {
    // What h5py's get_filter(0) reports for hdf5plugin 7.1's Bitshuffle(cname='lz4') on a uint16 dataset.
    assert_eq!(FILTER_ID, 32008);
    assert_eq!(cd_values(2), [0, 4, 2, 0, 2]);
    assert_eq!(cd_values(4), [0, 4, 4, 0, 2]);
}

#[test]
fn default_block_sizes_are_the_references() {
    assert_eq!(default_block_size(1), 8192);
    assert_eq!(default_block_size(2), 4096);
    assert_eq!(default_block_size(3), 2728);
    assert_eq!(default_block_size(4), 2048);
    assert_eq!(default_block_size(8), 1024);
    assert_eq!(default_block_size(100), 128);
}

/// A chunk hdf5plugin 7.1 wrote for 21 uint16 values `i·37 mod 4096`: two whole groups of 8 in one LZ4 block,
/// the last 5 elements raw.
const HDF5PLUGIN_CHUNK: &str = "000000000000002a0000200000000022f011aaaacccc5a5a6c93701c2ab54c267038803f00c0000000000000000000000000500275029a02bf02e402";

#[test]
fn decodes_a_chunk_hdf5plugin_wrote() {
    let want: Vec<u16> = (0..21u16).map(|i| i * 37 % 4096).collect();
    let chunk = hex(HDF5PLUGIN_CHUNK);
    assert_eq!(decompressed_len(&chunk), Ok(42));
    let mut out = vec![0u8; 42];
    decompress(&chunk, 2, &mut out).unwrap();
    assert_eq!(out, to_bytes(&want));
}

#[test]
fn writes_the_reference_layout() {
    let want: Vec<u16> = (0..21u16).map(|i| i * 37 % 4096).collect();
    let mut chunk = Vec::new();
    let n = compress(&to_bytes(&want), 2, &mut chunk).unwrap();
    assert_eq!(n, chunk.len());
    let reference = hex(HDF5PLUGIN_CHUNK);
    // Header, the one block's length prefix and the raw tail are byte for byte the reference's; LZ4 encoders may
    // differ in the block itself, so it is checked by decoding.
    assert_eq!(chunk[..12], reference[..12]);
    assert_eq!(chunk[chunk.len() - 10..], reference[reference.len() - 10..]);
    let block_len = u32::from_be_bytes(chunk[12..16].try_into().unwrap()) as usize;
    assert_eq!(chunk.len(), 12 + 4 + block_len + 10);
    let mut shuffled = vec![0u8; 32];
    assert_eq!(lz4_flex::block::decompress_into(&chunk[16..16 + block_len], &mut shuffled).unwrap(), 32);
    assert_eq!(shuffled, shuffle::reference_bitshuffle(&to_bytes(&want)[..32], 2));
}

#[test]
fn empty_input_is_a_bare_header() {
    let mut chunk = vec![1, 2, 3];
    assert_eq!(compress(&[], 2, &mut chunk), Ok(12));
    assert_eq!(chunk, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0]);
    decompress(&chunk, 2, &mut []).unwrap();
}

#[test]
fn bad_arguments_and_chunks_are_clear_errors() {
    let mut chunk = Vec::new();
    assert_eq!(compress(&[0; 4], 0, &mut chunk), Err(Error::ZeroElemSize));
    assert_eq!(compress(&[0; 5], 2, &mut chunk), Err(Error::PartialElement { len: 5, elem_size: 2 }));
    let input: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
    compress(&input, 2, &mut chunk).unwrap();
    let mut out = vec![0u8; input.len()];
    assert_eq!(decompress(&chunk[..11], 2, &mut out), Err(Error::TruncatedHeader(11)));
    assert_eq!(decompress(&chunk, 2, &mut out[..100]), Err(Error::OutputLength { header: 20000, out: 100 }));
    let mut bad = chunk.clone();
    bad[8..12].copy_from_slice(&12u32.to_be_bytes());
    assert_eq!(decompress(&bad, 2, &mut out), Err(Error::BadBlockSize { block_bytes: 12, elem_size: 2 }));
    let cut = &chunk[..chunk.len() - 1];
    assert!(
        matches!(decompress(cut, 2, &mut out), Err(Error::TruncatedBlock { .. })),
        "{:?}",
        decompress(cut, 2, &mut out)
    );
    let mut long = chunk.clone();
    long.push(0);
    assert_eq!(decompress(&long, 2, &mut out), Err(Error::TailLength { expected: 0, actual: 1 }));
    decompress(&chunk, 2, &mut out).unwrap();
    assert_eq!(out, input);
}

#[test]
fn the_bound_holds_for_incompressible_data() {
    // xorshift bytes: LZ4's worst case.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let input: Vec<u8> = (0..100_003 * 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut chunk = Vec::new();
    let n = compress(&input, 4, &mut chunk).unwrap();
    assert!(n <= max_compressed_len(input.len(), 4));
    let mut out = vec![0u8; input.len()];
    decompress(&chunk, 4, &mut out).unwrap();
    assert_eq!(out, input);
}

fn elements() -> impl Strategy<Value = (usize, Vec<u8>)> {
    (prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(8)], 0usize..20_000).prop_flat_map(|(s, n)| {
        // Runs of a few values, as pixels have, so LZ4 finds matches as well as literals.
        (Just(s), proptest::collection::vec(prop_oneof![Just(0u8), Just(1), any::<u8>()], n * s..=n * s))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trips((s, input) in elements()) {
        let mut chunk = Vec::new();
        let n = compress(&input, s, &mut chunk).unwrap();
        prop_assert!(n <= max_compressed_len(input.len(), s));
        prop_assert_eq!(decompressed_len(&chunk), Ok(input.len() as u64));
        let mut out = vec![0u8; input.len()];
        decompress(&chunk, s, &mut out).unwrap();
        prop_assert_eq!(out, input);
    }

    /// Any corruption of a valid chunk (a flipped byte, a cut) is an error or a wrong result, never a panic.
    #[test]
    fn corrupt_chunks_never_panic((s, input) in elements(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut chunk = Vec::new();
        compress(&input, s, &mut chunk).unwrap();
        let mut out = vec![0u8; input.len()];
        let i = at.index(chunk.len());
        chunk[i] ^= byte | 1;
        let _ = decompress(&chunk, s, &mut out);
        let c = cut.index(chunk.len());
        let _ = decompress(&chunk[..c], s, &mut out);
    }

    /// Arbitrary bytes, with a plausible or an arbitrary header, never panic.
    #[test]
    fn arbitrary_chunks_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), total in 0usize..5000, block in any::<u32>(), s in 1usize..9, plausible in any::<bool>()) {
        let mut chunk = Vec::new();
        chunk.extend_from_slice(&(total as u64).to_be_bytes());
        let block = if plausible { (block % 64 + 1) * 8 * s as u32 } else { block };
        chunk.extend_from_slice(&block.to_be_bytes());
        chunk.extend_from_slice(&body);
        let mut out = vec![0u8; total];
        let _ = decompress(&chunk, s, &mut out);
        let _ = decompress(&body, s, &mut out);
    }
}
