//! The write stage: frames of the armed acquisition from the frame ring → an output file and its JSON sidecar.
//!
//! Frame index `i` goes to its place in a file preallocated for the whole acquisition, under a temporary name
//! until it is final. The file's format is chosen by the output path's extension ([`format`]; `.npy` today).
//! Writes go straight from the frame-ring slot to the file (`O_DIRECT` where the file system supports it, since
//! slots and file offsets are page aligned). Writing frame `i` twice writes the same bytes at the same place, so
//! a restarted writer may repeat a frame harmlessly. When every frame of the acquisition is written, the writer
//! fixes the file if fewer frames came than requested, writes the sidecar, syncs both, and renames them into
//! place. A write error fails the acquisition, not the pipeline.
//!
//! Modules: [`stage`] (the loop over the frame ring), [`output`] (an acquisition's files, format-agnostic),
//! [`format`] (the output-format trait, its registry and the formats: [`npy`]), [`sidecar`],
//! [`placement`] (where a file's frames lie in the whole detector's frame), [`conformance`] (the checks every
//! format passes), [`preflight`] (what an acquisition needs, checked when it
//! is armed). The writer crate alone names the files it writes:
//! [`temp_files`] lists an acquisition's temporary files.

mod baseline;
pub mod conformance;
mod direct;
pub mod format;
mod journal;
pub mod output;
pub mod placement;
pub mod preflight;
pub mod sidecar;
pub mod stage;

pub use format::npy;
pub use output::{Output, temp_files};
pub use sidecar::{FrameMeta, Sidecar, sidecar_path};
pub use stage::Writer;

use shm_protocol::RingError;
use shm_protocol::pipeline;

/// Why the writer stopped (acquisition failures do not stop it; they are recorded in the region).
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The region is not a pipeline region.
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    /// A ring operation failed.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The region lacks a ring.
    #[error(transparent)]
    Region(#[from] shm_protocol::RegionError),
}

/// Tuning of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// Try `O_DIRECT` (falls back to buffered writes where the file system refuses it).
    pub direct_io: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self { direct_io: true }
    }
}
