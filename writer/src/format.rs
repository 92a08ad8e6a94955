//! Output formats: how the frames of an acquisition become a file, behind one trait.
//!
//! Modelled on odin-data's file-writer plugins: the stage loop, the per-frame journal and the JSON sidecar are
//! the same for every format; a format only lays frames out in its file. Every format follows the same rules:
//! frames go to temporary files preallocated for the whole acquisition, frame `i` always lands at the same
//! place with the same bytes (so a restarted writer may repeat frames), a file left by a killed writer can be
//! reopened and written on, and the file gets its final name only when it is complete and synced.
//!
//! A format is chosen by the output path's extension (see [`for_path`]). A new format is one module under
//! `format/` that implements [`OutputFormat`], declared and registered in this file (`FORMATS`);
//! `writer::conformance` then checks it.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use shm_protocol::pipeline::Compression;

use crate::sidecar::Sidecar;

// The formats. A new one is a module here and one entry in `FORMATS` below.
pub mod hdf5;
pub mod npy;

/// The frames of an acquisition: `rows × cols` little-endian `u16` pixels each, C order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameShape {
    /// Rows of a frame.
    pub rows: u64,
    /// Columns of a frame.
    pub cols: u64,
}

impl FrameShape {
    /// Bytes of one frame's pixels (2 a pixel).
    pub fn frame_bytes(self) -> u64 {
        self.rows * self.cols * 2
    }
}

/// What a new (or resumed) file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The frames' shape.
    pub shape: FrameShape,
    /// Frames the file is preallocated for.
    pub frames: u64,
    /// Try `O_DIRECT` writes (a format may ignore it).
    pub direct_io: bool,
    /// How frames are stored; one of the format's [`OutputFormat::compressions`].
    pub compression: Compression,
}

impl Plan {
    /// Bytes of the pixels of all planned frames (saturating: a request of absurd size is refused by its size,
    /// not by an overflow).
    pub fn pixel_bytes(&self) -> u64 {
        self.frames.saturating_mul(self.shape.frame_bytes())
    }
}

/// Why a format could not do what it was asked; the messages name the file and the step.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// No registered format writes files with this path's extension.
    #[error("{}: no output format for extension {ext:?}; known: {known}", path.display())]
    UnknownExtension {
        /// The output path.
        path: PathBuf,
        /// Its extension (empty if none).
        ext: String,
        /// The extensions that are known, comma separated.
        known: String,
    },
    /// The disk cannot hold the acquisition; nothing is left behind.
    #[error("not enough space for {frames} frames ({:.2} GB) at {}", *bytes as f64 / 1e9, path.display())]
    NoSpace {
        /// Frames planned.
        frames: u64,
        /// Bytes that were to be reserved.
        bytes: u64,
        /// The file that could not get them.
        path: PathBuf,
    },
    /// A system call failed; `what` says which step on which file.
    #[error("{what}: {source}")]
    Io {
        /// The step and its file, e.g. `syncing /data/run.npy.partial`.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file read back is not what the format writes.
    #[error("{}: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

impl FormatError {
    /// An I/O error at step `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }
}

/// A finished file read back: its shape (frames, rows, cols) and pixels in C order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBack {
    /// Frames, rows, cols.
    pub shape: [u64; 3],
    /// All pixels, frame after frame.
    pub pixels: Vec<u16>,
}

/// A file format the writer can write.
pub trait OutputFormat: Sync {
    /// Short name, for messages and logs (`npy`).
    fn name(&self) -> &'static str;

    /// The extensions (without the dot, lower case) of the paths this format writes.
    fn extensions(&self) -> &'static [&'static str];

    /// How a file of this format is called in messages: "the first 6 frames are kept in … (a valid .npy)".
    fn kind(&self) -> &'static str;

    /// The temporary files an acquisition into `path` creates, the file holding the frames first. They exist
    /// from [`OutputFormat::create`] until [`FormatFile::publish`], and are what [`OutputFormat::resume`] reopens.
    fn temp_files(&self, path: &Path) -> Vec<PathBuf>;

    /// Bytes the files of an acquisition for `plan` take on disk once every frame is written (what `create`
    /// preallocates), so that one that cannot fit is refused when it is armed.
    fn file_bytes(&self, plan: &Plan) -> u64;

    /// Creates (truncating leftovers) and preallocates the temporary files for `plan`.
    fn create(&self, path: &Path, plan: &Plan) -> Result<Box<dyn FormatFile>, FormatError>;

    /// Reopens the temporary files a killed writer left for the same `plan`, without losing a frame written;
    /// repeats what `create` does after creating (sizing, headers), with the same bytes.
    fn resume(&self, path: &Path, plan: &Plan) -> Result<Box<dyn FormatFile>, FormatError>;

    /// Reads a finished file back (for checks and tools).
    fn read(&self, path: &Path) -> Result<ReadBack, FormatError>;

    /// The compressions this format can store frames with (the first is the default, none).
    fn compressions(&self) -> &'static [Compression] {
        &[Compression::None]
    }

    /// Whether a file of this format can grow ([`FormatFile::grow`]), as a continuous acquisition needs.
    fn grows(&self) -> bool {
        true
    }
}

/// An acquisition's file while it is written, under its temporary name.
pub trait FormatFile: Send {
    /// Writes frame `index` (`pixels` is one frame, page aligned when it comes from the frame ring). Writing
    /// the same frame twice writes the same bytes at the same place.
    fn write_frame(&mut self, index: u64, pixels: &[u8]) -> Result<(), FormatError>;

    /// Makes room for `frames` frames in all (more than planned: a continuous acquisition grows its file in
    /// steps), each written frame staying where it is. Until the next `finish`, the file reads as `frames` frames
    /// (those not yet written hold zeros). A disk without the room is [`FormatError::NoSpace`].
    fn grow(&mut self, frames: u64) -> Result<(), FormatError>;

    /// Makes the file hold frames `0..frames` (fewer than planned: headers fixed, the rest cut off) and syncs
    /// it; it keeps its temporary name. Repeatable.
    fn finish(&mut self, frames: u64) -> Result<(), FormatError>;

    /// What the sidecar says of the acquisition (per-frame metadata, counters, how it ended) and the detector
    /// mode (the region's geometry), given before [`FormatFile::finish`], for a format that stores them in the file too (HDF5). Formats
    /// that do not ignore it.
    fn describe(&mut self, _sidecar: &Sidecar, _detector_mode: u32) {}

    /// CPU time spent compressing (ns, all threads) and compressed bytes written, by this file since it was
    /// opened; zeros for a format or file that does not compress.
    fn compression_stats(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Renames the finished file(s) to the final name.
    fn publish(&mut self) -> Result<(), FormatError>;

    /// On failure: makes the temporary file a valid file of `frames` frames, kept under its temporary name.
    fn keep(&mut self, frames: u64) -> Result<(), FormatError>;

    /// Removes the temporary files (the acquisition is abandoned before its first frame).
    fn discard(&mut self);

    /// The temporary file that holds the frames.
    fn temp_path(&self) -> &Path;

    /// Whether frame writes bypass the page cache (`O_DIRECT`), for the logs.
    fn is_direct(&self) -> bool {
        false
    }
}

/// Every output format, in order of preference. A new format is registered here.
static FORMATS: &[&dyn OutputFormat] = &[&npy::Npy, &hdf5::Hdf5];

/// The registered output formats.
pub fn registry() -> &'static [&'static dyn OutputFormat] {
    FORMATS
}

/// The format that writes `path`, chosen by its extension (ASCII case ignored).
pub fn for_path(path: &Path) -> Result<&'static dyn OutputFormat, FormatError> {
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    FORMATS.iter().copied().find(|f| f.extensions().iter().any(|e| e.eq_ignore_ascii_case(&ext))).ok_or_else(|| {
        let known: Vec<String> = FORMATS.iter().flat_map(|f| f.extensions().iter().map(|e| format!(".{e}"))).collect();
        FormatError::UnknownExtension { path: path.to_owned(), ext, known: known.join(", ") }
    })
}

/// How the writer opens its files (data, journal, chunk store): read-write, created with mode 0644, truncated
/// unless a restarted writer resumes what its predecessor left.
pub(crate) fn output_options(resume: bool) -> OpenOptions {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(!resume).mode(0o644);
    opts
}

/// An I/O error while `what` (a step: "sizing", "writing", ...) file `path`.
pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> FormatError {
    FormatError::io(format!("{what} {}", path.display()), e)
}

/// Gives `file` (at `path`) `len` bytes of disk, the space of `frames` frames (it never shrinks here). The frames
/// get their space before they come: a disk that fills up later (another process, a long run) cannot fail a
/// frame write, and one that is too small fails here, before any frame of the step. A file system without
/// `fallocate` gets the file sized sparse.
pub(crate) fn reserve(file: &std::fs::File, len: u64, frames: u64, path: &Path) -> Result<(), FormatError> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => Err(FormatError::NoSpace { frames, bytes: len, path: path.to_owned() }),
        Err(_) if file.metadata().is_ok_and(|m| m.len() >= len) => Ok(()),
        Err(_) => file.set_len(len).map_err(|e| io_err("sizing", path, e)),
    }
}

/// Whether frame `index` of `pixels.len()` bytes fits the file at `path` planned as `plan`.
pub(crate) fn check_frame(path: &Path, plan: &Plan, index: u64, pixels: &[u8]) -> Result<(), FormatError> {
    if index >= plan.frames || pixels.len() as u64 != plan.shape.frame_bytes() {
        return Err(FormatError::Invalid {
            path: path.to_owned(),
            why: format!("frame {index} of {} bytes does not fit {plan:?}", pixels.len()),
        });
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (`run.npy` → `run.npy.partial`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_by_extension() {
        assert_eq!(for_path(Path::new("/d/run.npy")).map(|f| f.name()).ok(), Some("npy"));
        assert_eq!(for_path(Path::new("/d/RUN.NPY")).map(|f| f.name()).ok(), Some("npy"));
        let err = for_path(Path::new("/d/run.tif")).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "/d/run.tif: no output format for extension \"tif\"; known: .npy, .h5, .hdf5, .nxs");
        let err = for_path(Path::new("/d/run")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("extension \"\""), "{err}");
    }

    #[test]
    fn every_extension_has_one_format() {
        let mut seen = std::collections::BTreeSet::new();
        for f in registry() {
            for e in f.extensions() {
                assert!(seen.insert(*e), ".{e} registered twice");
                assert_eq!(*e, e.to_ascii_lowercase());
            }
        }
    }
}
