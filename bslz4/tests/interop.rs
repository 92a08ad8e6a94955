//! bslz4 against the reference implementation, through the tools users read HDF5 with: h5py + hdf5plugin.
//!
//! (a) Frames compressed by this crate are written into an HDF5 dataset created with
//! `hdf5plugin.Bitshuffle(cname='lz4')` by `write_direct_chunk`; h5py reads them back through hdf5plugin's filter
//! and must see the same pixels. (b) hdf5plugin compresses the same frames (an ordinary `dset[...] = frames`);
//! `read_direct_chunk` hands its chunks to this crate's `decompress`, which must give the same pixels. The dataset's
//! filter parameters must equal [`bslz4::cd_values`]. Shapes include element counts that are not a multiple of 8
//! or of the block size, and element sizes 1, 2 and 4.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One dataset: `frames` frames of `rows × cols` elements of `elem_size` bytes.
struct Case {
    frames: usize,
    rows: usize,
    cols: usize,
    elem_size: usize,
}

const CASES: &[Case] = &[
    // 3700 elements: less than one block, 4 raw tail elements.
    Case { frames: 3, rows: 100, cols: 37, elem_size: 2 },
    // 65536 elements: exactly 16 blocks of 4096.
    Case { frames: 2, rows: 256, cols: 256, elem_size: 2 },
    // 9000 bytes: one block of 8192, a last block of 808, no tail.
    Case { frames: 2, rows: 1000, cols: 9, elem_size: 1 },
    // 9797 elements: 4 blocks of 2048, a last block of 1600, 5 raw tail elements.
    Case { frames: 2, rows: 97, cols: 101, elem_size: 4 },
    // 3 elements: nothing but the raw tail.
    Case { frames: 2, rows: 1, cols: 3, elem_size: 2 },
    // 4099 elements of 2 bytes: one block and 3 raw elements.
    Case { frames: 1, rows: 4099, cols: 1, elem_size: 2 },
    // A K2 IS sector's worth of 16-bit pixels: 930 × 256.
    Case { frames: 2, rows: 930, cols: 256, elem_size: 2 },
];

/// Deterministic test pixels: mostly a 12-bit-ish background with sparse bright hits and runs, so LZ4 sees both
/// matches and literals.
fn pixels(case: &Case, index: usize) -> Vec<u8> {
    let n = case.frames * case.rows * case.cols;
    let mut out = Vec::with_capacity(n * case.elem_size);
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (index as u64 + 1);
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v: u64 = match x % 16 {
            0 => x >> 20,
            1..=3 => (i as u64 / 7) & 0xFFF,
            _ => 100 + (x >> 60),
        };
        out.extend_from_slice(&v.to_le_bytes()[..case.elem_size]);
    }
    out
}

/// A directory removed when dropped, even if the test fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SCRIPT: &str = r#"
import json, os, sys
import numpy as np, h5py, hdf5plugin

d = sys.argv[1]
cases = json.load(open(os.path.join(d, "cases.json")))
dtypes = {1: "<u1", 2: "<u2", 4: "<u4"}
path = os.path.join(d, "interop.h5")
with h5py.File(path, "w") as f:
    for i, c in enumerate(cases):
        shape = (c["frames"], c["rows"], c["cols"])
        dt = dtypes[c["elem_size"]]
        frames = np.fromfile(os.path.join(d, f"{i}.raw"), dtype=dt).reshape(shape)
        # (a) this crate's chunks, written as they are.
        ours = f.create_dataset(f"ours{i}", shape=shape, dtype=dt, chunks=(1,) + shape[1:],
                                **hdf5plugin.Bitshuffle(cname="lz4"))
        filt = ours.id.get_create_plist().get_filter(0)
        assert filt[0] == 32008 and list(filt[2]) == c["cd_values"], (filt, c["cd_values"])
        blob = open(os.path.join(d, f"{i}.chunks"), "rb").read()
        pos = 0
        for k in range(shape[0]):
            n = int.from_bytes(blob[pos:pos + 8], "little")
            ours.id.write_direct_chunk((k, 0, 0), blob[pos + 8:pos + 8 + n])
            pos += 8 + n
        assert pos == len(blob)
        # (b) hdf5plugin's own chunks of the same frames.
        theirs = f.create_dataset(f"theirs{i}", data=frames, chunks=(1,) + shape[1:],
                                  **hdf5plugin.Bitshuffle(cname="lz4"))
with h5py.File(path, "r") as f:
    for i, c in enumerate(cases):
        shape = (c["frames"], c["rows"], c["cols"])
        frames = np.fromfile(os.path.join(d, f"{i}.raw"), dtype=dtypes[c["elem_size"]]).reshape(shape)
        got = f[f"ours{i}"][...]
        if not np.array_equal(got, frames):
            bad = np.argwhere(got != frames)
            sys.exit(f"case {i}: h5py+hdf5plugin read {len(bad)} pixels differently from what bslz4 compressed, first {bad[0]}")
        with open(os.path.join(d, f"{i}.plugin"), "wb") as out:
            for k in range(shape[0]):
                mask, chunk = f[f"theirs{i}"].id.read_direct_chunk((k, 0, 0))
                assert mask == 0
                out.write(len(chunk).to_bytes(8, "little"))
                out.write(chunk)
print("ok")
"#;

/// Reads a file of chunks, each prefixed by its length as a little-endian u64.
fn read_chunks(path: &Path) -> Vec<Vec<u8>> {
    let blob = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < blob.len() {
        let n = u64::from_le_bytes(blob[pos..pos + 8].try_into().unwrap()) as usize;
        out.push(blob[pos + 8..pos + 8 + n].to_vec());
        pos += 8 + n;
    }
    out
}

#[test]
fn hdf5plugin_reads_our_chunks_and_we_read_its() {
    let dir = TempDir(std::env::temp_dir().join(format!("bslz4-interop-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut meta = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let raw = pixels(case, i);
        std::fs::write(dir.0.join(format!("{i}.raw")), &raw).unwrap();
        let frame_bytes = case.rows * case.cols * case.elem_size;
        let mut blob = Vec::new();
        let mut chunk = Vec::new();
        for frame in raw.chunks_exact(frame_bytes) {
            let n = bslz4::compress(frame, case.elem_size, &mut chunk).unwrap();
            blob.extend_from_slice(&(n as u64).to_le_bytes());
            blob.extend_from_slice(&chunk);
        }
        std::fs::write(dir.0.join(format!("{i}.chunks")), &blob).unwrap();
        let cd = bslz4::cd_values(case.elem_size);
        meta.push(format!(
            r#"{{"frames": {}, "rows": {}, "cols": {}, "elem_size": {}, "cd_values": [{}, {}, {}, {}, {}]}}"#,
            case.frames, case.rows, case.cols, case.elem_size, cd[0], cd[1], cd[2], cd[3], cd[4]
        ));
    }
    std::fs::write(dir.0.join("cases.json"), format!("[{}]", meta.join(", "))).unwrap();

    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&dir.0)
        .output()
        .expect("python3 with numpy, h5py and hdf5plugin (CI installs them)");
    assert!(
        out.status.success(),
        "python: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for (i, case) in CASES.iter().enumerate() {
        let raw = std::fs::read(dir.0.join(format!("{i}.raw"))).unwrap();
        let frame_bytes = case.rows * case.cols * case.elem_size;
        let chunks = read_chunks(&dir.0.join(format!("{i}.plugin")));
        assert_eq!(chunks.len(), case.frames, "case {i}");
        for (k, (chunk, want)) in chunks.iter().zip(raw.chunks_exact(frame_bytes)).enumerate() {
            assert_eq!(bslz4::decompressed_len(chunk), Ok(frame_bytes as u64), "case {i} frame {k}");
            let mut got = vec![0u8; frame_bytes];
            bslz4::decompress(chunk, case.elem_size, &mut got).unwrap();
            assert!(got == want, "case {i} frame {k}: bslz4 decodes hdf5plugin's chunk differently");
        }
    }
}
