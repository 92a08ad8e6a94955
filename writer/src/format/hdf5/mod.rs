//! The `.h5` output format: an HDF5 file in the NeXus (NXmx) layout of `layout.rs`, frames in
//! `/entry/data/data` (frames, rows, cols) `uint16`, one frame per chunk, stored as they are
//! ([`Compression::None`]) or bitshuffle + LZ4 compressed ([`Compression::Bslz4`], HDF5 filter 32008, which h5py
//! reads with hdf5plugin).
//!
//! # Crash safety: libhdf5 never has the file open while frames are written
//! libhdf5's metadata cache is not crash-safe: a process killed with the file open leaves a file libhdf5 may
//! refuse. So libhdf5 opens the file only to create it and to finish it, and a kill during either is undone by
//! starting that step again from a saved state. The temporary files are `<path>.partial` (the HDF5 file) and
//! `<path>.store.partial` (what the format needs to resume and finish), for both compressions.
//!
//! ## Without compression: frames at known offsets, `O_DIRECT`
//! [`create`](OutputFormat::create) has libhdf5 build the whole file up front, with the latest file format and
//! every allocation of a page or more page aligned: `/entry/data/data` chunked one frame a chunk, of fixed shape,
//! allocated at creation and never filled. libhdf5 then indexes the chunks implicitly: they are one block, chunk
//! `i` at `base + i × frame bytes` (read back with `H5Dget_chunk_info` and checked for the first and last
//! chunk). libhdf5 closes the file; the frames are then written straight from the frame ring with `O_DIRECT` at
//! those offsets, exactly as for `.npy`, and `/entry/data/frames_written` (one `u64` at a known offset) is
//! rewritten after each frame. The file is a valid HDF5 file at every instant, so h5py can open it at any time
//! and read frames `0..frames_written` (readable while written, without SWMR: nothing in the file's structure
//! changes while frames come).
//!
//! The store keeps a copy of every byte of the fresh file but the frames' block (a few pages plus the tree). The
//! finish first restores those bytes (and the file's length), then has libhdf5 set the data's first dimension
//! to the frames written, write the per-frame datasets, counters and attributes, and close; the space of frames
//! planned but not written is given back (`FALLOC_FL_PUNCH_HOLE`). So a finish killed half way is repeated from
//! the same bytes, with the same result, and so is a finish repeated after a kill before the rename.
//!
//! ## bslz4: chunks in a store, the HDF5 file written at the finish
//! Compressed chunks have sizes only known once compressed, and libhdf5 chooses where they go, so they cannot be
//! written at known offsets. Each frame is compressed (its blocks split between the writer's compression
//! threads, see `compress.rs`) and appended to the store, page aligned, then its record (offset, length) is
//! written to the store's index at `16 × index`, before the writer commits the frame-ring slot: a record
//! always names a chunk written whole. A writer restarted after a kill appends again from the store's end
//! (a chunk torn by the kill is never named) and rewrites the frames after its committed cursor, whose new
//! records name the same bytes. The finish writes the HDF5 file from scratch (truncating it): the tree,
//! `/entry/data/data` with filter 32008 in its pipeline (optional, so libhdf5 needs no plugin to write it), each
//! chunk with a direct chunk write (`H5Dwrite_chunk`) in index order, the per-frame datasets; a finish killed
//! half way is simply repeated. As for `.npy`, nothing is synced before the finish: the crash this survives is
//! the writer's (its page-cache writes survive it), not the machine's. The cost is a second copy of the chunks
//! at the finish (about a second per GB here), during which the writer takes no frame; a store that libhdf5
//! could index in place (writing the chunk index ourselves) would remove it.
//!
//! A compressed file is not readable while written: until the finish, `<path>.partial` holds the tree with no
//! frames (h5py opens it and sees 0 frames). Live frames are read from the pipeline (the `ringdaq` Python
//! package, LiberTEM), which is where they are anyway.
//!
//! ## Continuous acquisitions
//! Both layouts are sized for the frame count when created (the implicit chunk index and the store's index
//! have no room to grow), so `.h5` is refused for continuous acquisitions when armed ([`OutputFormat::grows`]);
//! they write `.npy`.

mod compress;
mod layout;
mod raw;
mod store;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use self::layout::Description;
use self::store::{ChunkStore, Skeleton};
use crate::direct::{self, DirectFile};
use crate::format::{
    Compression, FormatError, FormatFile, OutputFormat, Plan, ReadBack, check_frame, io_err, reserve, with_suffix,
};
use crate::sidecar::Sidecar;

pub use self::compress::Compressor;

/// The `.h5` format.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hdf5;

/// `<path>.store.partial`: the skeleton's bytes (no compression) or the chunk store (bslz4).
fn store_path(path: &Path) -> PathBuf {
    with_suffix(path, ".store.partial")
}

impl Hdf5 {
    fn open(path: &Path, plan: &Plan, resume: bool) -> Result<Box<dyn FormatFile>, FormatError> {
        let tmp = with_suffix(path, ".partial");
        let store = store_path(path);
        let r = match plan.compression {
            Compression::None => {
                Plain::open(path, &tmp, &store, plan, resume).map(|f| Box::new(f) as Box<dyn FormatFile>)
            }
            Compression::Bslz4 => {
                Packed::open(path, &tmp, &store, plan, resume).map(|f| Box::new(f) as Box<dyn FormatFile>)
            }
        };
        // Nothing is left behind for an acquisition whose files could not be set up.
        if r.is_err() && !resume {
            remove_temps(&tmp, &store);
        }
        r
    }
}

impl OutputFormat for Hdf5 {
    fn name(&self) -> &'static str {
        "hdf5"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &["h5", "hdf5", "nxs"]
    }

    fn kind(&self) -> &'static str {
        ".h5"
    }

    fn temp_files(&self, path: &Path) -> Vec<PathBuf> {
        vec![with_suffix(path, ".partial"), store_path(path)]
    }

    fn file_bytes(&self, plan: &Plan) -> u64 {
        match plan.compression {
            // The tree takes a few pages; the store a copy of them (1 MiB covers both up to ~10^5 frames of
            // per-frame datasets), plus 36 bytes a frame of per-frame datasets.
            Compression::None => {
                plan.pixel_bytes().saturating_add(1 << 20).saturating_add(plan.frames.saturating_mul(36 + 16))
            }
            // Chunks at worst a little larger than the frame, page aligned, twice while the finish copies them
            // from the store into the file.
            Compression::Bslz4 => store::worst_chunk_bytes(plan.shape.frame_bytes())
                .saturating_mul(plan.frames)
                .saturating_mul(2)
                .saturating_add(1 << 20)
                .saturating_add(plan.frames.saturating_mul(36 + 16)),
        }
    }

    fn create(&self, path: &Path, plan: &Plan) -> Result<Box<dyn FormatFile>, FormatError> {
        Self::open(path, plan, false)
    }

    fn resume(&self, path: &Path, plan: &Plan) -> Result<Box<dyn FormatFile>, FormatError> {
        Self::open(path, plan, true)
    }

    fn read(&self, path: &Path) -> Result<ReadBack, FormatError> {
        layout::read(path).map_err(|e| FormatError::Invalid { path: path.to_owned(), why: e.to_string() })
    }

    fn compressions(&self) -> &'static [Compression] {
        &[Compression::None, Compression::Bslz4]
    }

    fn grows(&self) -> bool {
        false
    }
}

/// An `.h5` file is sized for its frame count when it is created: it takes no more frames than `plan` has.
fn cannot_grow(tmp: &Path, plan: &Plan, frames: u64) -> Result<(), FormatError> {
    if frames <= plan.frames {
        return Ok(());
    }
    Err(FormatError::Invalid { path: tmp.to_owned(), why: "an .h5 file cannot grow past its frame count".into() })
}

/// Removes an unfinished file's temporary file and its store.
fn remove_temps(tmp: &Path, store: &Path) {
    let _ = std::fs::remove_file(tmp);
    let _ = std::fs::remove_file(store);
}

fn publish(tmp: &Path, path: &Path, store: &Path) -> Result<(), FormatError> {
    std::fs::rename(tmp, path).map_err(|e| io_err("renaming to", path, e))?;
    // After the rename: a kill between the two leaves the file published and a store the next arming of this
    // path removes, never a `.partial` without its store.
    let _ = std::fs::remove_file(store);
    Ok(())
}

/// An `.h5` without compression being written.
struct Plain {
    /// Frames go through this one (`O_DIRECT` if it can).
    file: DirectFile,
    /// Everything else (small, unaligned writes) through this one, buffered.
    meta: std::fs::File,
    tmp: PathBuf,
    path: PathBuf,
    store: PathBuf,
    plan: Plan,
    skeleton: Skeleton,
    /// `frames_written` as last written.
    written: u64,
    description: Option<Description>,
}

impl Plain {
    fn open(path: &Path, tmp: &Path, store: &Path, plan: &Plan, resume: bool) -> Result<Self, FormatError> {
        let skeleton = if resume {
            Skeleton::load(store, plan)?
        } else {
            let places = layout::create_uncompressed(tmp, plan).map_err(|e| io_err("creating", tmp, e))?;
            Skeleton::save(tmp, store, plan, places)?
        };
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).mode(0o644);
        let direct_ok = plan.direct_io
            && plan.shape.frame_bytes().is_multiple_of(direct::ALIGN as u64)
            && skeleton.places.data.is_multiple_of(direct::ALIGN as u64);
        let file = DirectFile::open(tmp, &opts, direct_ok).map_err(|e| io_err("opening", tmp, e))?;
        let meta = opts.open(tmp).map_err(|e| io_err("opening", tmp, e))?;
        reserve(&meta, skeleton.len, plan.frames, tmp)?;
        let mut buf = [0u8; 8];
        let written = match meta.read_exact_at(&mut buf, skeleton.places.written) {
            Ok(()) => u64::from_le_bytes(buf),
            Err(e) => return Err(io_err("reading frames_written of", tmp, e)),
        };
        Ok(Self {
            file,
            meta,
            tmp: tmp.to_owned(),
            path: path.to_owned(),
            store: store.to_owned(),
            plan: *plan,
            skeleton,
            written,
            description: None,
        })
    }

    /// Restores the fresh file's bytes (all but the frames) and has libhdf5 make it a file of `frames` frames.
    fn complete(&mut self, frames: u64) -> Result<(), FormatError> {
        self.skeleton.restore(&self.meta, &self.tmp)?;
        layout::finish_uncompressed(&self.tmp, frames, self.plan.frames, self.description.as_ref())
            .map_err(|e| io_err("finishing", &self.tmp, e))?;
        if frames < self.plan.frames {
            // The frames planned but not written give their space back (they read as zeros, never read).
            let fb = self.plan.shape.frame_bytes();
            let (from, to) =
                (self.skeleton.places.data + frames * fb, self.skeleton.places.data + self.plan.frames * fb);
            let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            if let Err(e) = rustix::fs::fallocate(&self.meta, flags, from, to - from) {
                tracing::debug!(error = %e, "punching out the frames not written");
            }
        }
        self.written = frames;
        Ok(())
    }
}

impl FormatFile for Plain {
    fn write_frame(&mut self, index: u64, pixels: &[u8]) -> Result<(), FormatError> {
        check_frame(&self.tmp, &self.plan, index, pixels)?;
        let offset = self.skeleton.places.data + index * self.plan.shape.frame_bytes();
        self.file
            .write_at(pixels, offset)
            .map_err(|e| FormatError::io(format!("writing frame {index} to {}", self.tmp.display()), e))?;
        if index + 1 > self.written {
            // Frames come in order, so 0..index+1 are written: readers may take them.
            self.written = index + 1;
            self.meta
                .write_all_at(&self.written.to_le_bytes(), self.skeleton.places.written)
                .map_err(|e| io_err("writing frames_written of", &self.tmp, e))?;
        }
        Ok(())
    }

    fn grow(&mut self, frames: u64) -> Result<(), FormatError> {
        cannot_grow(&self.tmp, &self.plan, frames)
    }

    fn finish(&mut self, frames: u64) -> Result<(), FormatError> {
        self.complete(frames)?;
        self.meta.sync_all().map_err(|e| io_err("syncing", &self.tmp, e))
    }

    fn describe(&mut self, sidecar: &Sidecar, detector_mode: u32) {
        self.description = Some(Description { sidecar: sidecar.clone(), detector_mode });
    }

    fn publish(&mut self) -> Result<(), FormatError> {
        publish(&self.tmp, &self.path, &self.store)
    }

    fn keep(&mut self, frames: u64) -> Result<(), FormatError> {
        // Without the per-frame datasets: they need new space, and a full disk is a reason to keep.
        self.description = None;
        self.complete(frames)
    }

    fn discard(&mut self) {
        remove_temps(&self.tmp, &self.store);
    }

    fn temp_path(&self) -> &Path {
        &self.tmp
    }

    fn is_direct(&self) -> bool {
        self.file.is_direct()
    }
}

/// A bslz4-compressed `.h5` being written: chunks go to the store, the file is written at the finish.
struct Packed {
    tmp: PathBuf,
    path: PathBuf,
    store_path: PathBuf,
    plan: Plan,
    store: ChunkStore,
    compressor: Compressor,
    description: Option<Description>,
}

impl Packed {
    fn open(path: &Path, tmp: &Path, store: &Path, plan: &Plan, resume: bool) -> Result<Self, FormatError> {
        let chunks = ChunkStore::open(store, plan, resume)?;
        if !resume {
            // The tree without frames, so that the temporary file is an HDF5 file from the start.
            write_packed(tmp, plan, 0, &chunks, None)?;
        }
        Ok(Self {
            tmp: tmp.to_owned(),
            path: path.to_owned(),
            store_path: store.to_owned(),
            plan: *plan,
            store: chunks,
            compressor: Compressor::new(compress::threads()),
            description: None,
        })
    }
}

fn write_packed(
    tmp: &Path,
    plan: &Plan,
    frames: u64,
    store: &ChunkStore,
    d: Option<&Description>,
) -> Result<(), FormatError> {
    let cd = bslz4::cd_values(2);
    layout::write_compressed(tmp, plan.shape, frames, (bslz4::FILTER_ID, &cd), |i| store.read(i), d)
        .map_err(|e| io_err("writing", tmp, e))
}

impl FormatFile for Packed {
    fn write_frame(&mut self, index: u64, pixels: &[u8]) -> Result<(), FormatError> {
        check_frame(&self.tmp, &self.plan, index, pixels)?;
        let chunk = self.compressor.compress(pixels).map_err(|e| FormatError::Invalid {
            path: self.tmp.clone(),
            why: format!("compressing frame {index}: {e}"),
        })?;
        self.store.append(index, chunk)
    }

    fn grow(&mut self, frames: u64) -> Result<(), FormatError> {
        cannot_grow(&self.tmp, &self.plan, frames)
    }

    fn finish(&mut self, frames: u64) -> Result<(), FormatError> {
        write_packed(&self.tmp, &self.plan, frames, &self.store, self.description.as_ref())?;
        std::fs::File::open(&self.tmp).and_then(|f| f.sync_all()).map_err(|e| io_err("syncing", &self.tmp, e))
    }

    fn describe(&mut self, sidecar: &Sidecar, detector_mode: u32) {
        self.description = Some(Description { sidecar: sidecar.clone(), detector_mode });
    }

    fn publish(&mut self) -> Result<(), FormatError> {
        publish(&self.tmp, &self.path, &self.store_path)
    }

    fn keep(&mut self, frames: u64) -> Result<(), FormatError> {
        // The chunks are copied into the file: on a full disk this fails, and the store keeps them.
        write_packed(&self.tmp, &self.plan, frames, &self.store, None)
    }

    fn discard(&mut self) {
        remove_temps(&self.tmp, &self.store_path);
    }

    fn temp_path(&self) -> &Path {
        &self.tmp
    }

    fn compression_stats(&self) -> (u64, u64) {
        (self.compressor.cpu_ns(), self.store.bytes_written())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{FRAMES, SHAPE, TempDir};

    fn pixels(i: u64) -> Vec<u8> {
        crate::conformance::frame(i).iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    /// A finish killed half way leaves libhdf5's metadata torn: whatever it left (here: garbage over the file's
    /// first 2 KiB and past its end), the next finish starts from the saved bytes and gives the same file.
    #[test]
    fn a_finish_torn_anywhere_is_repeated_whole() {
        let dir = TempDir::new("h5-torn").unwrap();
        for compression in [Compression::None, Compression::Bslz4] {
            for n in [FRAMES, 2] {
                let plan = Plan { shape: SHAPE, frames: FRAMES, direct_io: true, compression };
                let run = |name: &str, tear: bool| {
                    let path = dir.path().join(format!("{name}-{}-{n}.h5", compression.as_str()));
                    let mut f = Hdf5.create(&path, &plan).unwrap();
                    for i in 0..FRAMES {
                        f.write_frame(i, &pixels(i)).unwrap();
                    }
                    f.finish(n).unwrap();
                    if tear {
                        drop(f);
                        let tmp = with_suffix(&path, ".partial");
                        let file = OpenOptions::new().write(true).open(&tmp).unwrap();
                        // libhdf5 writes only metadata when it finishes: the superblock and object headers at
                        // the start (the frames begin at a page boundary after them), and what follows the frames.
                        file.write_all_at(&[0xA5; 2048], 0).unwrap();
                        let len = file.metadata().unwrap().len();
                        file.write_all_at(&[0x5A; 10_000], len).unwrap();
                        f = Hdf5.resume(&path, &plan).unwrap();
                        f.finish(n).unwrap();
                    }
                    f.publish().unwrap();
                    std::fs::read(&path).unwrap()
                };
                let want = run("reference", false);
                assert!(run("torn", true) == want, "{compression:?}, {n} frames: not the same file");
            }
        }
    }

    /// The frames of a file without compression are at page-aligned offsets, where libhdf5 reads them.
    #[test]
    fn frames_are_page_aligned_chunks() {
        let dir = TempDir::new("h5-aligned").unwrap();
        let path = dir.path().join("a.h5");
        let plan = Plan { shape: SHAPE, frames: FRAMES, direct_io: true, compression: Compression::None };
        let places = layout::create_uncompressed(&path, &plan).unwrap();
        assert!(places.data.is_multiple_of(4096), "{places:?}");
        let file = hdf5::File::open(&path).unwrap();
        let ds = file.dataset("entry/data/data").unwrap();
        for i in 0..FRAMES {
            let c = ds.chunk_info(i as usize).unwrap();
            assert_eq!(c.addr, places.data + i * SHAPE.frame_bytes());
            assert_eq!(c.size, SHAPE.frame_bytes());
        }
    }
}
