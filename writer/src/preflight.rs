//! Refusing, when an acquisition is armed, what cannot succeed once its frames come: a directory the writer
//! cannot write, or files larger than the file system has room for. The numbers are in the message
//! ("needs 761 TB for 100000000 frames, 72 GB free on /data").

use std::path::{Path, PathBuf};

use shm_protocol::pipeline::CONTINUOUS;

use crate::format::{self, Compression, FormatError, FrameShape, Plan};
use crate::stage::GROW_BYTES;

/// Bytes of the frame journal per frame (see `journal`), which exists until the sidecar is written.
const JOURNAL_BYTES_PER_FRAME: u64 = 64;
/// Bytes of the JSON sidecar per frame (one `frame_list` entry is about 180 bytes), and its fixed part.
const SIDECAR_BYTES_PER_FRAME: u64 = 256;
const SIDECAR_BYTES: u64 = 64 * 1024;

/// Why an acquisition cannot be armed.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// No format writes the path's extension.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The format cannot store frames so, or cannot grow its file for a continuous acquisition.
    #[error("{0}")]
    Unsupported(String),
    /// The directory cannot be written by the writer (the supervisor's user; it runs the writer).
    #[error("cannot write to {}: {source}", dir.display())]
    Unwritable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file system's free space could not be read.
    #[error("cannot read the free space of {}: {source}", dir.display())]
    Statvfs {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The files would not fit.
    #[error(
        "not enough space: needs {} for {}{frames} frames, {} free on {}",
        human_bytes(*needs),
        if *continuous { "the first " } else { "" },
        human_bytes(*free),
        dir.display()
    )]
    NoRoom {
        /// Frames requested (of a continuous acquisition: its first preallocation step).
        frames: u64,
        /// Whether the acquisition is continuous.
        continuous: bool,
        /// Bytes the acquisition's files take.
        needs: u64,
        /// Bytes free (for an unprivileged user) on the directory's file system.
        free: u64,
        /// The directory.
        dir: PathBuf,
    },
}

/// Bytes the files of an acquisition of `frames` frames of `shape` into `path` take at most on disk: the
/// format's file, the frame journal and the sidecar (they exist together while the file is finished).
pub fn bytes_needed(path: &Path, shape: FrameShape, frames: u64, compression: Compression) -> Result<u64, FormatError> {
    let plan = Plan { shape, frames, direct_io: false, compression };
    let per_frame = JOURNAL_BYTES_PER_FRAME + SIDECAR_BYTES_PER_FRAME;
    Ok(format::for_path(path)?
        .file_bytes(&plan)
        .saturating_add(frames.saturating_mul(per_frame))
        .saturating_add(SIDECAR_BYTES))
}

/// Checks that an acquisition of `frames` frames of `shape` into `path` (absolute, its directory existing) can
/// be written: the directory is writable and its file system has room for all of it (a continuous one,
/// `frames` = [`CONTINUOUS`]: for its first preallocation step, [`GROW_BYTES`] of frames). Returns the bytes
/// needed.
pub fn check(path: &Path, shape: FrameShape, frames: u64, compression: Compression) -> Result<u64, PreflightError> {
    let continuous = frames == CONTINUOUS;
    let f = format::for_path(path)?;
    if !f.compressions().contains(&compression) {
        let known: Vec<&str> = f.compressions().iter().map(|c| c.as_str()).collect();
        return Err(PreflightError::Unsupported(format!(
            "{} files cannot be stored with compression {}; they take: {} (bslz4 needs an .h5 output)",
            f.kind(),
            compression.as_str(),
            known.join(", ")
        )));
    }
    if continuous && !f.grows() {
        return Err(PreflightError::Unsupported(format!(
            "{} files are sized for their frame count when they are created: give --frames (a continuous \
             acquisition, until `ringdaq stop`, needs a .npy output)",
            f.kind()
        )));
    }
    let frames = if continuous { (GROW_BYTES / shape.frame_bytes().max(1)).max(1) } else { frames };
    let needs = bytes_needed(path, shape, frames, compression)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    rustix::fs::access(dir, access)
        .map_err(|e| PreflightError::Unwritable { dir: dir.to_owned(), source: e.into() })?;
    let vfs =
        rustix::fs::statvfs(dir).map_err(|e| PreflightError::Statvfs { dir: dir.to_owned(), source: e.into() })?;
    let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    if needs > free {
        return Err(PreflightError::NoRoom { frames, continuous, needs, free, dir: dir.to_owned() });
    }
    Ok(needs)
}

/// Bytes in decimal units, as `df -H` prints them: `761 TB`, `72 GB`, `1.5 MB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if v < 10.0 { format!("{v:.1} {}", UNITS[unit]) } else { format!("{v:.0} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K2_IS: FrameShape = FrameShape { rows: 1860, cols: 2048 };

    #[test]
    fn sizes_read_as_df_prints_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(72_000_000_000), "72 GB");
        assert_eq!(human_bytes(u64::MAX), "18 EB");
    }

    #[test]
    fn the_issue_s_request_needs_761_tb() {
        let needs = bytes_needed(Path::new("/data/huge.npy"), K2_IS, 100_000_000, Compression::None).expect("npy");
        assert_eq!(human_bytes(needs), "762 TB");
        assert!(bytes_needed(Path::new("/data/huge.tif"), K2_IS, 1, Compression::None).is_err());
        // No overflow for an absurd request.
        assert_eq!(bytes_needed(Path::new("/d/x.npy"), K2_IS, u64::MAX, Compression::None).ok(), Some(u64::MAX));
    }

    #[test]
    fn refused_with_the_numbers_or_accepted() {
        let dir = crate::conformance::TempDir::new("preflight").expect("temp dir");
        let path = dir.path().join("run.npy");
        let err = check(&path, K2_IS, 100_000_000, Compression::None).expect_err("no disk has 762 TB free").to_string();
        assert!(err.starts_with("not enough space: needs 762 TB for 100000000 frames, "), "{err}");
        assert!(err.ends_with(&format!(" free on {}", dir.path().display())), "{err}");
        assert!(check(&path, K2_IS, 1, Compression::None).is_ok_and(|n| n > K2_IS.frame_bytes()));
        // A continuous acquisition needs room for its first step (1 GiB of frames: 140 of a K2 IS).
        let first = bytes_needed(&path, K2_IS, 140, Compression::None).expect("npy");
        assert_eq!(check(&path, K2_IS, CONTINUOUS, Compression::None).ok(), Some(first));
        // (Root may write anywhere but on a read-only file system, so a directory that is not there stands in.)
        let gone = dir.path().join("gone").join("run.npy");
        let err = check(&gone, K2_IS, 1, Compression::None).expect_err("no such directory").to_string();
        assert!(err.starts_with("cannot write to ") && err.contains("gone"), "{err}");
    }
}
