//! `<path>.store.partial`, what an `.h5` acquisition needs besides the HDF5 file to resume and finish:
//! - without compression, a [`Skeleton`]: the fresh file's bytes but the frames' block, to start the finish
//!   from them again;
//! - with bslz4, a [`ChunkStore`]: a header page, an index of 16 bytes a frame (offset, length of its chunk;
//!   offset 0: not written) and the compressed chunks, each at a page-aligned offset.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::layout::Places;
use crate::format::{FormatError, Plan, io_err, output_options, reserve};

const SKELETON_MAGIC: &[u8; 8] = b"RDQH5SK1";
const CHUNKS_MAGIC: &[u8; 8] = b"RDQH5CS1";
const PAGE: u64 = 4096;
/// Bytes of a chunk's index record.
const RECORD: u64 = 16;

fn invalid(path: &Path, why: impl Into<String>) -> FormatError {
    FormatError::Invalid { path: path.to_owned(), why: why.into() }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE).saturating_mul(PAGE)
}

/// The most disk a chunk of a frame of `frame_bytes` takes in the store (incompressible data grows a little).
pub(super) fn worst_chunk_bytes(frame_bytes: u64) -> u64 {
    round_up(bslz4::max_compressed_len(frame_bytes as usize, 2) as u64)
}

/// The fresh uncompressed file's bytes but the frames' block: the file's length, its bytes before the
/// block (`head`) and after it (`tail`).
#[derive(Debug)]
pub(super) struct Skeleton {
    /// Where the frames and `frames_written` are.
    pub places: Places,
    /// The fresh file's length.
    pub len: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    tail_at: u64,
}

impl Skeleton {
    /// Copies the fresh file `tmp`'s bytes but its frames' block into `store`.
    pub(super) fn save(tmp: &Path, store: &Path, plan: &Plan, places: Places) -> Result<Self, FormatError> {
        let f = File::open(tmp).map_err(|e| io_err("reading", tmp, e))?;
        let len = f.metadata().map_err(|e| io_err("reading", tmp, e))?.len();
        let tail_at = places.data + plan.pixel_bytes();
        if tail_at > len {
            return Err(invalid(tmp, format!("frames end at {tail_at}, after the file's end {len}")));
        }
        let mut head = vec![0u8; places.data as usize];
        let mut tail = vec![0u8; (len - tail_at) as usize];
        f.read_exact_at(&mut head, 0).map_err(|e| io_err("reading", tmp, e))?;
        f.read_exact_at(&mut tail, tail_at).map_err(|e| io_err("reading", tmp, e))?;
        let s = Self { places, len, head, tail, tail_at };
        let mut bytes = Vec::with_capacity(64 + s.head.len() + s.tail.len());
        bytes.extend_from_slice(SKELETON_MAGIC);
        for v in [plan.frames, plan.shape.frame_bytes(), places.data, places.written, len, tail_at, s.head.len() as u64]
        {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&s.head);
        bytes.extend_from_slice(&s.tail);
        std::fs::write(store, &bytes).map_err(|e| io_err("writing", store, e))?;
        Ok(s)
    }

    /// Reads the skeleton saved in `store` for `plan`.
    pub(super) fn load(store: &Path, plan: &Plan) -> Result<Self, FormatError> {
        let b = std::fs::read(store).map_err(|e| io_err("reading", store, e))?;
        let head_at = 64usize;
        if b.len() < head_at || &b[..8] != SKELETON_MAGIC {
            return Err(invalid(store, "not the skeleton of an .h5 file"));
        }
        let v = |i| u64_at(&b[8..], i);
        if v(0) != plan.frames || v(1) != plan.shape.frame_bytes() {
            return Err(invalid(store, format!("saved for {} frames of {} bytes, not for {plan:?}", v(0), v(1))));
        }
        let places = Places { data: v(2), written: v(3) };
        let (len, tail_at, head_len) = (v(4), v(5), v(6) as usize);
        let (head, tail) = b[head_at..].split_at_checked(head_len).ok_or_else(|| invalid(store, "truncated"))?;
        if head_len as u64 != places.data || tail_at + tail.len() as u64 != len {
            return Err(invalid(store, "inconsistent skeleton"));
        }
        Ok(Self { places, len, head: head.to_vec(), tail: tail.to_vec(), tail_at })
    }

    /// Makes `file` (`tmp`) the fresh file again but for the frames it holds.
    pub(super) fn restore(&self, file: &File, tmp: &Path) -> Result<(), FormatError> {
        file.set_len(self.len).map_err(|e| io_err("restoring", tmp, e))?;
        file.write_all_at(&self.head, 0).map_err(|e| io_err("restoring", tmp, e))?;
        file.write_all_at(&self.tail, self.tail_at).map_err(|e| io_err("restoring", tmp, e))
    }
}

/// Compressed chunks by frame index.
#[derive(Debug)]
pub(super) struct ChunkStore {
    file: File,
    path: PathBuf,
    frames: u64,
    /// Where the next chunk goes.
    end: u64,
    /// Bytes of chunks appended by this process.
    written: u64,
}

impl ChunkStore {
    fn index_at(i: u64) -> u64 {
        PAGE + i * RECORD
    }

    /// Creates the store for `plan` (truncating), or reopens the one a killed writer left.
    pub(super) fn open(path: &Path, plan: &Plan, resume: bool) -> Result<Self, FormatError> {
        let file = output_options(resume).open(path).map_err(|e| io_err("creating", path, e))?;
        let chunks_at = round_up(Self::index_at(plan.frames));
        let mut header = [0u8; 32];
        header[..8].copy_from_slice(CHUNKS_MAGIC);
        header[8..16].copy_from_slice(&plan.frames.to_le_bytes());
        header[16..24].copy_from_slice(&plan.shape.frame_bytes().to_le_bytes());
        if resume {
            let mut got = [0u8; 32];
            file.read_exact_at(&mut got, 0).map_err(|e| io_err("reading", path, e))?;
            if got[..24] != header[..24] {
                return Err(invalid(path, format!("not the chunk store of {plan:?}")));
            }
        } else {
            // The index gets its space now: a disk that fills up later fails a chunk, never its record.
            reserve(&file, chunks_at, plan.frames, path)?;
            file.write_all_at(&header, 0).map_err(|e| io_err("writing", path, e))?;
        }
        let len = file.metadata().map_err(|e| io_err("reading", path, e))?.len();
        // After a kill, a chunk torn at the end is named by no record: the next one goes after it.
        let end = round_up(len.max(chunks_at));
        Ok(Self { file, path: path.to_owned(), frames: plan.frames, end, written: 0 })
    }

    /// Appends frame `index`'s chunk, then its record (so a record always names a whole chunk).
    pub(super) fn append(&mut self, index: u64, chunk: &[u8]) -> Result<(), FormatError> {
        if index >= self.frames {
            return Err(invalid(&self.path, format!("frame {index} of {}", self.frames)));
        }
        let at = self.end;
        let what = || format!("writing frame {index} to {}", self.path.display());
        self.file.write_all_at(chunk, at).map_err(|e| FormatError::io(what(), e))?;
        let mut rec = [0u8; RECORD as usize];
        rec[..8].copy_from_slice(&at.to_le_bytes());
        rec[8..].copy_from_slice(&(chunk.len() as u64).to_le_bytes());
        self.file.write_all_at(&rec, Self::index_at(index)).map_err(|e| FormatError::io(what(), e))?;
        self.end = round_up(at + chunk.len() as u64);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Frame `index`'s chunk, `None` if it was never written.
    pub(super) fn read(&self, index: u64) -> std::io::Result<Option<Vec<u8>>> {
        let mut rec = [0u8; RECORD as usize];
        self.file.read_exact_at(&mut rec, Self::index_at(index))?;
        let (at, len) = (u64_at(&rec, 0), u64_at(&rec, 1));
        if at == 0 {
            return Ok(None);
        }
        let mut chunk = vec![0u8; len as usize];
        self.file.read_exact_at(&mut chunk, at)?;
        Ok(Some(chunk))
    }

    /// Bytes of chunks appended by this process.
    pub(super) fn bytes_written(&self) -> u64 {
        self.written
    }
}
