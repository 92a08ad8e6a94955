//! The frame journal, `<path>.frames.partial`: one 64-byte record per frame written, at `64 × index`, from
//! which the sidecar is made at the end. Writing a record twice is harmless, and a restarted writer finds what
//! its predecessor wrote. It is the same for every output format.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{FormatError, output_options, with_suffix};
use crate::sidecar::FrameMeta;

/// Size of one record.
const RECORD: usize = 64;

/// The journal's path for output `path`.
pub(crate) fn path(path: &Path) -> PathBuf {
    with_suffix(path, ".frames.partial")
}

/// Encodes a frame's sidecar entry (little-endian; first byte 1 marks the record written).
fn encode(m: &FrameMeta) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0] = 1;
    r[1] = u8::from(m.complete);
    r[4..8].copy_from_slice(&m.frame_id.to_le_bytes());
    r[8..16].copy_from_slice(&m.index.to_le_bytes());
    r[16..20].copy_from_slice(&m.missing_blocks.to_le_bytes());
    r[24..32].copy_from_slice(&m.first_block_ns.to_le_bytes());
    r[32..40].copy_from_slice(&m.last_block_ns.to_le_bytes());
    r[40..48].copy_from_slice(&m.published_ns.to_le_bytes());
    r
}

fn decode(r: &[u8]) -> Option<FrameMeta> {
    let u32at = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let u64at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default());
    (r.len() == RECORD && r[0] == 1).then(|| FrameMeta {
        index: u64at(8),
        frame_id: u32at(4),
        complete: r[1] == 1,
        missing_blocks: u32at(16),
        first_block_ns: u64at(24),
        last_block_ns: u64at(32),
        published_ns: u64at(40),
    })
}

/// An open journal.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Creates the journal of output `path` (truncating a leftover), or reopens it if `resume`.
    pub(crate) fn open(output: &Path, resume: bool) -> Result<Self, FormatError> {
        let path = path(output);
        let file = output_options(resume)
            .open(&path)
            .map_err(|e| FormatError::io(format!("creating {}", path.display()), e))?;
        Ok(Self { file, path })
    }

    /// Reserves the records of `frames` frames, so that a disk filling up later cannot fail a record. Only a
    /// full disk is an error; a file system without `fallocate` gets the records written sparse.
    pub(crate) fn reserve(&self, frames: u64) -> Result<(), FormatError> {
        let bytes = frames * RECORD as u64;
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
            Err(rustix::io::Errno::NOSPC) => Err(FormatError::NoSpace { frames, bytes, path: self.path.clone() }),
            _ => Ok(()),
        }
    }

    /// Records frame `m.index`.
    pub(crate) fn record(&self, m: &FrameMeta) -> std::io::Result<()> {
        self.file.write_all_at(&encode(m), m.index * RECORD as u64)
    }

    /// The records of indices `0..n`, by index (missing ones skipped).
    pub(crate) fn read(&self, n: u64) -> Vec<FrameMeta> {
        let mut buf = vec![0u8; n as usize * RECORD];
        let got = self.file.read_at(&mut buf, 0).unwrap_or(0);
        buf[..got - got % RECORD].chunks_exact(RECORD).filter_map(decode).filter(|m| m.index < n).collect()
    }

    /// Removes the journal's file.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
