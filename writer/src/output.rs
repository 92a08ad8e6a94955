//! An acquisition's output while it is written: the format's file, the frame journal and, at the end, the
//! sidecar. Format-agnostic: the format is chosen by the path's extension, and every file name comes from here.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::format::{self, FormatError, FormatFile, OutputFormat, Plan};
use crate::journal::{self, Journal};
use crate::sidecar::{self, FrameMeta, Sidecar};

/// Every temporary file an acquisition into `path` may leave: the format's, the journal, the sidecar's. An
/// unknown extension is an error (no format writes it).
pub fn temp_files(path: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let mut files = format::for_path(path)?.temp_files(path);
    files.push(journal::path(path));
    files.push(crate::baseline::path(path));
    files.push(sidecar::temp_path(path));
    Ok(files)
}

/// The files of an acquisition being written into `path`.
pub struct Output {
    format: &'static dyn OutputFormat,
    path: PathBuf,
    file: Box<dyn FormatFile>,
    journal: Journal,
    plan: Plan,
}

impl Output {
    /// Whether a killed writer left the files of an acquisition into `path` (the format's and the journal).
    pub fn can_resume(path: &Path) -> bool {
        format::for_path(path).is_ok_and(|f| f.temp_files(path).iter().all(|p| p.exists()))
            && journal::path(path).exists()
    }

    /// Creates and preallocates the files of an acquisition into `path`, or, if `resume`, reopens the ones a
    /// killed writer left (see [`Output::can_resume`]).
    pub fn open(path: &Path, plan: &Plan, resume: bool) -> Result<Self, FormatError> {
        let format = format::for_path(path)?;
        let mut file = if resume { format.resume(path, plan)? } else { format.create(path, plan)? };
        let journal = match Journal::open(path, resume) {
            Ok(j) => j,
            Err(e) => {
                // Nothing is left behind for an acquisition that never got a frame.
                if !resume {
                    file.discard();
                }
                return Err(e);
            }
        };
        if let Err(e) = journal.reserve(plan.frames) {
            // Nothing is left behind on a disk too small for the acquisition.
            journal.remove();
            file.discard();
            return Err(e);
        }
        Ok(Self { format, path: path.to_owned(), file, journal, plan: *plan })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames planned: the file has room for this many (a continuous acquisition's grows, see [`Output::grow`]).
    pub fn requested(&self) -> u64 {
        self.plan.frames
    }

    /// Makes room for `frames` frames in all (file and journal), if there is less.
    pub fn grow(&mut self, frames: u64) -> Result<(), FormatError> {
        if frames <= self.plan.frames {
            return Ok(());
        }
        self.file.grow(frames)?;
        self.journal.reserve(frames)?;
        self.plan.frames = frames;
        Ok(())
    }

    /// Whether frame writes bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.file.is_direct()
    }

    /// CPU time spent compressing (ns) and compressed bytes written since the file was opened.
    pub fn compression_stats(&self) -> (u64, u64) {
        self.file.compression_stats()
    }

    /// Writes frame `meta.index` and its journal record; repeating it is harmless.
    pub fn write(&mut self, meta: &FrameMeta, pixels: &[u8]) -> Result<(), FormatError> {
        self.file.write_frame(meta.index, pixels)?;
        self.journal.record(meta).map_err(|e| {
            FormatError::io(format!("writing frame {} to {}", meta.index, self.file.temp_path().display()), e)
        })
    }

    /// Finishes the acquisition with `frames` frames: the file is fixed (given the sidecar, made by `sidecar`
    /// from the journal's records, and the detector mode, for a format that stores them) and synced, the sidecar
    /// written, then the file renamed into place and the journal removed.
    pub fn finish(
        &mut self,
        frames: u64,
        detector_mode: u32,
        sidecar: impl FnOnce(Vec<FrameMeta>) -> Sidecar,
    ) -> Result<(), FormatError> {
        let side = sidecar(self.journal.read(frames));
        self.file.describe(&side, detector_mode);
        self.file.finish(frames)?;
        sidecar::write(&side, &self.path)?;
        self.file.publish()?;
        self.journal.remove();
        // The renames are durable once the directory is synced.
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// On failure: keeps the first `frames` frames readable in the temporary file, and says where.
    pub fn keep(&mut self, frames: u64) -> String {
        match self.file.keep(frames) {
            Ok(()) => format!(
                "the first {frames} frames are kept in {} (a valid {})",
                self.file.temp_path().display(),
                self.format.kind()
            ),
            Err(e) => format!(
                "the first {frames} frames could not be made a valid {} ({e}); what was written is left in {}",
                self.format.kind(),
                self.format
                    .temp_files(&self.path)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}
