//! The fuzz targets' inputs, replayed through the same harness as `cargo fuzz` runs (`ringdaq_tests::fuzz`):
//! generated seeds (real traffic), the seed corpora in `fuzz/seeds/<target>/`, and every minimal crasher kept
//! in `fuzz/regressions/<target>/` after its bug was fixed.
//!
//! `cargo test -p ringdaq-tests --test fuzz_regressions -- --ignored write_seed_corpus` (re)writes the seeds.

use std::path::{Path, PathBuf};

use detector::k2;
use detector::k2::header::BlockHeader;
use ringdaq_tests::fuzz;

const TARGETS: [&str; 3] = ["datagram", "assembly", "control"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").join("fuzz")
}

fn run(target: &str, data: &[u8]) {
    match target {
        "datagram" => fuzz::datagram(data),
        "assembly" => fuzz::assembly(data),
        "control" => fuzz::control(data),
        other => panic!("no target {other}"),
    }
}

/// Seeds made from real traffic: valid datagrams of both modes (and a few broken), whole frames in and out
/// of order, a frame-id reset, control messages.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (mode, g) in [(k2::IS, k2::IS_GEOMETRY), (k2::SUMMIT, k2::SUMMIT_GEOMETRY)] {
        for (i, block) in [0, g.blocks_per_sector() - 1, g.blocks_per_frame() - 1].into_iter().enumerate() {
            let (x, y) = g.block_position(block % g.blocks_per_sector());
            let mut d = vec![0u8; g.block_bytes()];
            let mut h = [0u8; detector::k2::geometry::HEADER_BYTES];
            BlockHeader::for_block(&g, 7 + i as u32, 0, x, y, 0).encode(&mut h);
            d[..h.len()].copy_from_slice(&h);
            for (k, b) in d[h.len()..].iter_mut().enumerate() {
                *b = (k * 7) as u8;
            }
            out.push(("datagram", format!("{mode}-block-{block}"), d.clone()));
            d.truncate(100);
            out.push(("datagram", format!("{mode}-block-{block}-truncated"), d));
        }
    }
    out.push(("assembly", "one-frame".into(), fuzz::assembly_seed(1, 0, false)));
    out.push(("assembly", "three-frames-interleaved".into(), fuzz::assembly_seed(3, 100, true)));
    let mut reset = fuzz::assembly_seed(2, 5000, false);
    reset.extend(fuzz::assembly_seed(2, 3, false));
    out.push(("assembly", "reset".into(), reset));
    let mut gap = fuzz::assembly_seed(2, 0, true);
    // Every 17th record: the data clock jumps (a gap), and every 29th is corrupted.
    for (i, r) in gap.chunks_exact_mut(fuzz::ASSEMBLY_RECORD).enumerate() {
        r[0] |= if i % 17 == 0 { 8 } else { 0 } | if i % 29 == 0 { 2 } else { 0 };
    }
    out.push(("assembly", "gaps-and-garbage".into(), gap));
    use shm_protocol::messages::{PROTOCOL_VERSION, Request, Role, SyncMode};
    let requests = [
        Request::Hello { protocol: PROTOCOL_VERSION, role: Role::Client },
        Request::Status,
        Request::Acquire {
            frames: 100,
            path: "/tmp/x.npy".into(),
            sync: SyncMode::Flag,
            compression: Default::default(),
        },
        Request::Subscribe { lossless: true },
        Request::Release { upto: 12345 },
    ];
    for (i, r) in requests.iter().enumerate() {
        out.push(("control", format!("request-{i}"), postcard::to_stdvec(r).expect("encode")));
    }
    out
}

#[test]
fn generated_seeds_run_clean() {
    for (target, name, data) in seeds() {
        eprintln!("{target}/{name}: {} bytes", data.len());
        run(target, &data);
    }
}

#[test]
fn kept_corpora_and_crashers_run_clean() {
    let mut n = 0;
    for target in TARGETS {
        for kind in ["seeds", "regressions"] {
            let dir = fuzz_dir().join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files.into_iter().filter(|f| f.is_file()) {
                let data = std::fs::read(&f).expect("read");
                run(target, &data);
                n += 1;
            }
        }
    }
    assert!(n > 0, "no kept fuzz inputs found under {}", fuzz_dir().display());
}

/// Writes the generated seeds to `fuzz/seeds/<target>/` (the fuzzers' starting corpora).
#[test]
#[ignore = "writes files into the repository; run by hand"]
fn write_seed_corpus() {
    for (target, name, data) in seeds() {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(name), data).expect("write");
    }
}
