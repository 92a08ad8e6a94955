//! The JSON sidecar written beside every output file: per-frame status, missing blocks, timestamps, counters.
//! It is the same for every output format.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;
use shm_protocol::pipeline::EndReason;

use crate::format::{FormatError, with_suffix};
pub use crate::placement::PartPlacement;

/// Per-frame entry of the sidecar.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FrameMeta {
    /// Index in the acquisition (the first axis of the array).
    pub index: u64,
    /// The detector's frame id.
    pub frame_id: u32,
    /// Whether every block arrived.
    pub complete: bool,
    /// Blocks missing (their pixels hold the fill value).
    pub missing_blocks: u32,
    /// Receive time of the first block, ns since the Unix epoch.
    pub first_block_ns: u64,
    /// Receive time of the last block.
    pub last_block_ns: u64,
    /// When the assembler published the frame.
    pub published_ns: u64,
}

/// The JSON sidecar written next to each output file (same path, extension `.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Sidecar {
    /// Format version of this sidecar.
    pub version: u32,
    /// Acquisition id.
    pub acquisition_id: u64,
    /// The output file.
    pub path: String,
    /// Frames requested (for a continuous acquisition: the frames it got).
    pub frames_requested: u64,
    /// Whether the acquisition ran until stopped, without a frame count.
    #[serde(default)]
    pub continuous: bool,
    /// How it ended: `complete`, `stopped` (by the user), `stream_idle`, `shutdown`, `pipeline_failed`,
    /// `disk_full`, `write_error` (see `shm_protocol::pipeline::EndReason`).
    #[serde(default)]
    pub ended: Option<EndReason>,
    /// How it ended, in words (null when complete).
    #[serde(default)]
    pub reason: Option<String>,
    /// Frames in the file.
    pub frames: u64,
    /// Complete frames.
    pub complete_frames: u64,
    /// Incomplete frames.
    pub incomplete_frames: u64,
    /// Array shape.
    pub shape: [u64; 3],
    /// Array dtype.
    pub dtype: String,
    /// Value of the pixels of missing blocks.
    pub fill_value: u32,
    /// Where the frames lie in the whole detector's frame (absent in sidecars written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PartPlacement>,
    /// Pipeline counters when the file was finished.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// One entry per frame, by index.
    pub frame_list: Vec<FrameMeta>,
}

impl Sidecar {
    /// Bytes of one frame's pixels: rows × cols × 2 (`dtype` is always `uint16`).
    pub fn frame_bytes(&self) -> u64 {
        self.shape[1] * self.shape[2] * 2
    }
}

/// The sidecar's path for an output path: the same path with the extension `json`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// Where the sidecar of `path` is written before it is renamed into place.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    with_suffix(&sidecar_path(path), ".partial")
}

/// Writes the sidecar of output `path`: under its temporary name, synced, then renamed into place.
pub(crate) fn write(sidecar: &Sidecar, path: &Path) -> Result<(), FormatError> {
    let json = serde_json::to_vec_pretty(sidecar).map_err(|e| FormatError::io("encoding the sidecar", e.into()))?;
    let side = sidecar_path(path);
    let side_tmp = temp_path(path);
    std::fs::write(&side_tmp, &json).map_err(|e| FormatError::io(format!("writing {}", side_tmp.display()), e))?;
    File::open(&side_tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| FormatError::io(format!("syncing {}", side_tmp.display()), e))?;
    std::fs::rename(&side_tmp, &side).map_err(|e| FormatError::io(format!("renaming {}", side.display()), e))
}
