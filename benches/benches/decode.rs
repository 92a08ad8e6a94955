//! Decode throughput in GB/s of output, beside memcpy of the same output bytes, in the same run.
//!
//! `cargo bench -p ringdaq-benches --bench decode`
//!
//! One frame, decoded again and again: source and frame stay in the cache, so this measures the kernels'
//! arithmetic and access pattern. The figure against the aim is `target/release/perf --only decode`, which
//! rotates over a frame ring's worth of frames and so runs at memory speed, as the pipeline does.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detector::k2;
use detector::k2::decode::Decoder;
use detector::k2::geometry::{Geometry, PixelEncoding, SECTORS};
use detector::k2::header::BlockHeader;
use std::hint::black_box;

/// Encoded blocks of one frame in camera order: (sector, header, payload).
fn camera_frame(mode: detector::Format, g: Geometry) -> Vec<(usize, BlockHeader, Vec<u8>)> {
    let frame = detector::pattern::expected_frame(&*mode, 3);
    let mut out = Vec::new();
    for b in 0..g.blocks_per_sector() {
        let (x, y) = g.block_position(b);
        for s in 0..SECTORS {
            let mut px = Vec::with_capacity(g.block_width() * g.block_height());
            for r in 0..g.block_height() {
                let at = (y + r) * g.frame_cols() + s * g.sector_width() + x;
                px.extend_from_slice(&frame[at..at + g.block_width()]);
            }
            let mut payload = vec![0u8; g.payload_bytes()];
            match g.encoding() {
                PixelEncoding::Packed12 => detector::k2::decode::pack12(&px, &mut payload),
                PixelEncoding::U16Be => detector::k2::decode::encode_u16be(&px, &mut payload),
            }
            out.push((s, BlockHeader::for_block(&g, 3, 0, x, y, 0), payload));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    for (mode, g) in [(k2::IS, k2::IS_GEOMETRY), (k2::SUMMIT, k2::SUMMIT_GEOMETRY)] {
        let blocks = camera_frame(mode, g);
        let mut frame = ringdaq_benches::PageBuffer::new(g.frame_bytes());
        let src = ringdaq_benches::PageBuffer::new(g.frame_bytes());
        let mut grp = c.benchmark_group(format!("{mode}/frame"));
        grp.throughput(Throughput::Bytes(g.frame_bytes() as u64));
        grp.bench_function("memcpy", |b| {
            b.iter(|| {
                frame.copy_from_slice(&src);
                black_box(&frame);
            })
        });
        for (name, d) in [("decode-portable", Decoder::portable()), ("decode-fast", Decoder::detect())] {
            grp.bench_function(name, |b| {
                b.iter(|| {
                    for (s, h, p) in &blocks {
                        d.place(&g, *s, h, p, &mut frame).unwrap();
                    }
                    black_box(&frame);
                })
            });
        }
        let index: Vec<usize> =
            blocks.iter().map(|(s, h, _)| g.block_index(*s, h.x_start.into(), h.y_start.into())).collect();
        for (name, d) in [("frame-decode-portable", Decoder::portable()), ("frame-decode-fast", Decoder::detect())] {
            grp.bench_function(name, |b| {
                b.iter(|| {
                    // Gather the blocks as they arrived (camera order) into their frame positions, then decode.
                    let mut refs: Vec<Option<&[u8]>> = vec![None; g.blocks_per_frame()];
                    for (i, (_, _, p)) in index.iter().zip(&blocks) {
                        refs[*i] = Some(p);
                    }
                    d.decode_frame(&g, &refs, &mut frame, 0).unwrap();
                    black_box(&frame);
                })
            });
        }
        grp.finish();

        let block_px = g.block_width() * g.block_height();
        let mut grp = c.benchmark_group(format!("{mode}/block"));
        grp.throughput(Throughput::Bytes(block_px as u64 * 2));
        let small_src = vec![0u16; block_px];
        let mut small_dst = vec![0u16; block_px];
        grp.bench_function("memcpy", |b| {
            b.iter(|| {
                small_dst.copy_from_slice(black_box(&small_src));
                black_box(&small_dst);
            })
        });
        let (s, h, p) = &blocks[0];
        for (name, d) in [("decode-portable", Decoder::portable()), ("decode-fast", Decoder::detect())] {
            grp.bench_function(name, |b| b.iter(|| d.place(&g, *s, h, black_box(p), &mut frame).unwrap()));
        }
        grp.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
