//! Acquisitions: arming one, and reading the state of one from its record in the region.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Context;
use shm_protocol::messages::{AcquisitionStatus, Compression, SyncMode};
use shm_protocol::pipeline::{self, AcquisitionState, BLOCK_RING, EndReason};

use super::Supervisor;

/// How long `stop` waits for the file to be final: the assembler ends the acquisition within its idle tick
/// (250 ms), the writer then writes what the frame ring holds and syncs the file (seconds at most for a ring of
/// a few GB).
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Supervisor {
    /// Arms an acquisition of `frames` frames into `path`, stored with `compression`.
    pub fn arm(&self, frames: u64, path: &str, sync: SyncMode, compression: Compression) -> anyhow::Result<u64> {
        anyhow::ensure!(frames > 0, "an acquisition needs at least one frame");
        anyhow::ensure!(!self.shutting_down(), "the pipeline is shutting down");
        let p = Path::new(path);
        anyhow::ensure!(p.is_absolute(), "output path {path} must be absolute");
        anyhow::ensure!(
            path.len() <= pipeline::MAX_PATH - 16,
            "output path is longer than {} bytes",
            pipeline::MAX_PATH - 16
        );
        let dir =
            p.parent().filter(|d| d.is_dir()).with_context(|| format!("the directory of {path} does not exist"))?;
        anyhow::ensure!(!p.exists(), "{path} exists; refusing to overwrite it");
        // Leftovers of an earlier run that died with this path armed: a new acquisition starts afresh.
        // (The writer crate names them; a path no output format writes is refused here.)
        for tmp in writer::temp_files(p)? {
            let _ = std::fs::remove_file(tmp);
        }
        // What cannot succeed is refused now, not when its frames come: an unwritable directory, a file system
        // without room for every frame (with the numbers).
        let g = self.region.header().geometry;
        let shape = writer::format::FrameShape { rows: g.frame_rows.into(), cols: g.frame_cols.into() };
        writer::preflight::check(p, shape, frames, compression)
            .with_context(|| format!("refusing to acquire into {path}"))?;
        let _ = dir;
        let area = self.area();
        let mut g = self.lock();
        if let Some(rec) = area.active() {
            let active = rec.id.load(Ordering::Relaxed);
            if rec.state() == AcquisitionState::Failed {
                // The writer failed it and no frame has told the assembler yet: it is over.
                let _ = area.active_acquisition.compare_exchange(active, 0, Ordering::AcqRel, Ordering::Relaxed);
            } else {
                anyhow::bail!("acquisition {active} is still running; stop it first");
            }
        }
        let id = g.next_acquisition;
        let rec = area.acquisition(id);
        anyhow::ensure!(
            rec.state().is_over(),
            "acquisition {} is still being written; try again when it is done",
            rec.id.load(Ordering::Relaxed)
        );
        g.next_acquisition += 1;
        let armed_at = self.region.ring(BLOCK_RING).map(|r| r.published()).unwrap_or(0);
        // SAFETY: we are the supervisor and the record's previous acquisition is finished (checked above).
        unsafe { rec.arm(id, frames, sync, compression, path, armed_at) };
        area.active_acquisition.store(id, Ordering::Release);
        shm_protocol::logging::set_acquisition(id);
        tracing::info!(frames, path, compression = compression.as_str(), "acquisition armed");
        Ok(id)
    }

    /// `ringdaq stop`: ends the running acquisition at its next frame, and answers once its file is final (done
    /// or failed), so that an `acquire` that follows is not refused as "still running".
    pub fn stop_acquisition(&self) -> anyhow::Result<()> {
        let rec = self.area().active().context("no acquisition is running")?;
        let id = rec.id.load(Ordering::Acquire);
        if rec.state().takes_frames() {
            rec.claim_end(EndReason::Stopped, "stopped by the user (ringdaq stop)");
        }
        rec.stop_requested.store(1, Ordering::Release);
        tracing::info!(acquisition = id, "stop requested");
        let over = || self.acquisition_status(id).is_none_or(|s| s.state.is_over());
        self.wait_until(STOP_WAIT, over).map_err(|waited| {
            anyhow::anyhow!(
                "acquisition {id} was told to stop, but its file is not final after {} s (is the writer running? see \
                 `ringdaq status`)",
                waited.as_secs()
            )
        })
    }

    /// The state of acquisition `id`, if its record still holds it.
    pub fn acquisition_status(&self, id: u64) -> Option<AcquisitionStatus> {
        let rec = self.area().acquisition(id);
        if rec.id.load(Ordering::Acquire) != id {
            return None;
        }
        let state = rec.state();
        let frames = rec.frames.load(Ordering::Relaxed);
        let ended = rec.end_reason();
        Some(AcquisitionStatus {
            id,
            path: rec.path(),
            state,
            frames,
            continuous: frames == pipeline::CONTINUOUS,
            assigned: rec.assigned.load(Ordering::Relaxed),
            written: rec.written.load(Ordering::Relaxed),
            complete: rec.complete.load(Ordering::Relaxed),
            error: (state == AcquisitionState::Failed).then(|| rec.error()),
            ended,
            reason: ended.filter(|&e| e != EndReason::Complete).map(|_| rec.reason()),
        })
    }
}
