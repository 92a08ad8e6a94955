//! bitshuffle-LZ4 (crate `bslz4`): compress and decompress throughput per core, beside `memcpy` and LZ4 alone on
//! the same frames in the same run, and the compression ratio on three kinds of K2 IS frames: the 4D-STEM pattern,
//! the counting pattern and random 12-bit pixels. Also the speed of each bit-transposition kernel and how many
//! 4D-STEM frames one core generates a second.
//!
//! Every figure is one thread, over several K2 IS frames (7.6 MB each) in rotation: more than the last-level
//! cache, as in the writer, where every frame is new. Throughput is of input (uncompressed) bytes for compression
//! and of output (uncompressed) bytes for decompression.

use std::hint::black_box;
use std::time::Instant;

use detector::k2;
use detector::pattern::Pattern;

/// The figures for one kind of frames.
#[derive(Debug, Clone)]
pub struct DataFigures {
    /// What the frames are.
    pub name: &'static str,
    /// `memcpy` of the frames (GB/s).
    pub memcpy_gbs: f64,
    /// LZ4 alone, the same 8 KiB blocks without the bit transposition (GB/s of input).
    pub lz4_compress_gbs: f64,
    /// LZ4 alone, decompressing (GB/s of output).
    pub lz4_decompress_gbs: f64,
    /// LZ4 alone: uncompressed / compressed bytes.
    pub lz4_ratio: f64,
    /// `bslz4::compress` (GB/s of input).
    pub compress_gbs: f64,
    /// `bslz4::decompress` (GB/s of output).
    pub decompress_gbs: f64,
    /// bslz4: uncompressed / compressed bytes.
    pub ratio: f64,
}

/// Everything this module measures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Per kind of frames.
    pub data: Vec<DataFigures>,
    /// Bit transposition alone, per kernel: (kernel, shuffle GB/s, unshuffle GB/s), on one block in cache.
    pub kernels: Vec<(String, f64, f64)>,
    /// 4D-STEM K2 IS frames generated per second on one core.
    pub stem_frames_per_s: f64,
}

/// Best-of-`passes` seconds of `f`.
fn best(passes: usize, mut f: impl FnMut()) -> f64 {
    (0..passes)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Measures over `frames` frames of each kind, best of `passes` passes.
pub fn measure(frames: usize, passes: usize) -> anyhow::Result<Figures> {
    let f = k2::IS;
    let bytes_per_frame = f.frame_bytes();
    let stem = Pattern::Stem { seed: 0 };
    let maker = stem.frames(&*f);
    // Generation speed: frame ids spread over the scan, so the disk is everywhere.
    let mut frame = vec![0u16; f.frame_pixels()];
    let gen_frames = 4 * frames;
    let secs = best(passes.min(3), || {
        for i in 0..gen_frames {
            maker.fill(i as u32 * 97, &mut frame);
            black_box(&frame);
        }
    });
    let stem_frames_per_s = gen_frames as f64 / secs;

    let to_bytes = |v: Vec<u16>| -> Vec<u8> { v.iter().flat_map(|p| p.to_le_bytes()).collect() };
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let kinds: Vec<(&'static str, Vec<Vec<u8>>)> = vec![
        ("4D-STEM pattern", (0..frames).map(|i| to_bytes(stem.frame(&*f, i as u32 * 997))).collect()),
        ("counting pattern", (0..frames).map(|i| to_bytes(Pattern::Counting.frame(&*f, i as u32))).collect()),
        (
            "random 12-bit",
            (0..frames)
                .map(|_| {
                    (0..f.frame_pixels())
                        .flat_map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            ((x >> 20) as u16 & 0x0FFF).to_le_bytes()
                        })
                        .collect()
                })
                .collect(),
        ),
    ];
    let total = (frames * bytes_per_frame) as f64;
    let mut data = Vec::new();
    let mut dst = vec![vec![0u8; bytes_per_frame]; frames];
    for (name, input) in &kinds {
        let memcpy_gbs = total
            / best(passes, || {
                for (d, s) in dst.iter_mut().zip(input) {
                    d.copy_from_slice(s);
                    black_box(&d);
                }
            })
            / 1e9;
        // LZ4 alone, in the blocks bslz4 uses (8 KiB), into one output buffer per frame.
        let block = bslz4::default_block_size(2) * 2;
        let mut lz4_out: Vec<Vec<u8>> = (0..frames).map(|_| Vec::new()).collect();
        let lz4_compress_secs = best(passes, || {
            for (o, s) in lz4_out.iter_mut().zip(input) {
                o.clear();
                o.resize(
                    s.len() / block * (lz4_flex::block::get_maximum_output_size(block) + 4) + s.len() % block + 64,
                    0,
                );
                let mut pos = 0;
                for b in s.chunks(block) {
                    let n = lz4_flex::block::compress_into(b, &mut o[pos + 4..]).unwrap_or(0);
                    o[pos..pos + 4].copy_from_slice(&(n as u32).to_le_bytes());
                    pos += 4 + n;
                }
                o.truncate(pos);
            }
        });
        let lz4_bytes: usize = lz4_out.iter().map(Vec::len).sum();
        let lz4_decompress_secs = best(passes, || {
            for (o, d) in lz4_out.iter().zip(dst.iter_mut()) {
                let mut pos = 0;
                for b in d.chunks_mut(block) {
                    let n = u32::from_le_bytes([o[pos], o[pos + 1], o[pos + 2], o[pos + 3]]) as usize;
                    let _ = lz4_flex::block::decompress_into(&o[pos + 4..pos + 4 + n], b);
                    pos += 4 + n;
                }
            }
        });
        let mut chunks: Vec<Vec<u8>> = (0..frames).map(|_| Vec::new()).collect();
        let compress_secs = best(passes, || {
            for (c, s) in chunks.iter_mut().zip(input) {
                let _ = bslz4::compress(s, 2, c);
            }
        });
        for c in &chunks {
            anyhow::ensure!(!c.is_empty(), "bslz4::compress failed on {name}");
        }
        let decompress_secs = best(passes, || {
            for (c, d) in chunks.iter().zip(dst.iter_mut()) {
                let _ = bslz4::decompress(c, 2, d);
            }
        });
        anyhow::ensure!(dst.iter().zip(input).all(|(d, s)| d == s), "bslz4 round trip differs on {name}");
        let bs_bytes: usize = chunks.iter().map(Vec::len).sum();
        data.push(DataFigures {
            name,
            memcpy_gbs,
            lz4_compress_gbs: total / lz4_compress_secs / 1e9,
            lz4_decompress_gbs: total / lz4_decompress_secs / 1e9,
            lz4_ratio: total / lz4_bytes as f64,
            compress_gbs: total / compress_secs / 1e9,
            decompress_gbs: total / decompress_secs / 1e9,
            ratio: total / bs_bytes as f64,
        });
    }

    // The kernels on one 8 KiB block of the STEM pattern, in cache, many times over.
    let block = &kinds[0].1[0][..8192];
    let (mut out, mut scratch, mut back) = (vec![0u8; 8192], vec![0u8; 8192], vec![0u8; 8192]);
    let reps = 4000;
    let mut kernels = Vec::new();
    for k in bslz4::shuffle::Kernel::available() {
        let s = best(passes, || {
            for _ in 0..reps {
                bslz4::shuffle::bitshuffle_with(k, black_box(block), &mut out, &mut scratch, 2);
            }
        });
        let u = best(passes, || {
            for _ in 0..reps {
                bslz4::shuffle::bitunshuffle_with(k, black_box(&out), &mut back, &mut scratch, 2);
            }
        });
        anyhow::ensure!(back == block, "{k:?} round trip differs");
        let gb = (reps * 8192) as f64 / 1e9;
        kernels.push((format!("{k:?}"), gb / s, gb / u));
    }
    Ok(Figures { data, kernels, stem_frames_per_s })
}
