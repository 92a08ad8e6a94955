//! Assigning frames to the armed acquisition, as they are published.
//!
//! The supervisor arms an acquisition in the region; the assembler, which publishes frames in order, decides
//! which frame is index 0 (immediate: the first whose first block arrived after arming; flag: the first such
//! frame with the sync flag) and numbers the following ones, until the requested count or a stop request.
//!
//! The order is crash-safe: [`plan`] decides without writing anything, the frame is published with its index in
//! its header, and only then [`record`] updates the acquisition. An assembler killed in between finds the
//! published frame's header on restart and records it then ([`reconcile`]), so an index is never lost or given
//! twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shm_protocol::pipeline::{
    AcquisitionRecord, AcquisitionState, EndReason, FrameHeader, NO_INDEX, PipelineArea, SyncMode,
};

/// A frame's place in an acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// Acquisition id.
    pub id: u64,
    /// Index of the frame in it.
    pub index: u64,
}

/// What the frame about to be published belongs to (nothing is written). `has_blocks`, `first_block_seq` and
/// `sync` describe the frame. A stop request ends the acquisition here, before the frame.
pub fn plan(area: &PipelineArea, has_blocks: bool, first_block_seq: u64, sync: bool) -> Option<Assignment> {
    let rec = area.active()?;
    let id = rec.id.load(Ordering::Acquire);
    let state = rec.state();
    if rec.stop_requested.load(Ordering::Acquire) != 0 && state.takes_frames() {
        end(area, rec);
        return None;
    }
    match state {
        AcquisitionState::Armed => {
            let after_arm = has_blocks && first_block_seq >= rec.armed_block_seq.load(Ordering::Relaxed);
            let flag_ok = rec.sync() == SyncMode::Immediate || sync;
            (after_arm && flag_ok).then_some(Assignment { id, index: 0 })
        }
        AcquisitionState::Running => Some(Assignment { id, index: rec.assigned.load(Ordering::Acquire) }),
        AcquisitionState::Failed => {
            // The writer gave up on it (a full disk): no more frames go to it, and the next can be armed.
            let _ = area.active_acquisition.compare_exchange(id, 0, Ordering::AcqRel, Ordering::Relaxed);
            tracing::info!(acquisition = id, "acquisition failed; no more frames assigned to it");
            None
        }
        _ => None,
    }
}

/// Records that frame-ring sequence `seq` was published as `a`. Idempotent: recording the same frame twice
/// changes nothing.
pub fn record(area: &PipelineArea, a: Assignment, seq: u64, frame_id: u32, complete: bool) {
    let rec = area.acquisition(a.id);
    if rec.id.load(Ordering::Acquire) != a.id || rec.assigned.load(Ordering::Acquire) > a.index {
        return;
    }
    if a.index == 0 {
        rec.first_seq.store(seq, Ordering::Release);
        // Only from ARMED: a state the writer set meanwhile (FAILED) is never overwritten.
        rec.transition(AcquisitionState::Armed, AcquisitionState::Running);
        tracing::info!(acquisition = a.id, frame_id, "acquisition started");
    }
    if complete {
        rec.complete.fetch_add(1, Ordering::Relaxed);
    }
    rec.assigned.store(a.index + 1, Ordering::Release);
    if a.index + 1 >= rec.frames.load(Ordering::Relaxed) {
        rec.claim_end(EndReason::Complete, "");
        end(area, rec);
    }
}

/// On start-up: records the last published frame if the previous assembler died before recording it.
pub fn reconcile(area: &PipelineArea, last: &FrameHeader) {
    if last.acquisition_id != 0 && last.index != NO_INDEX {
        let a = Assignment { id: last.acquisition_id, index: last.index };
        record(area, a, last.seq, last.frame_id, last.is_complete());
    }
}

/// Marks every frame of `rec` as assigned and clears it as the active acquisition.
pub fn end(area: &PipelineArea, rec: &AcquisitionRecord) {
    let id = rec.id.load(Ordering::Acquire);
    // From ARMED or RUNNING only: FAILED (set by the writer) stays.
    for from in [AcquisitionState::Armed, AcquisitionState::Running] {
        rec.transition(from, AcquisitionState::Assigned);
    }
    let _ = area.active_acquisition.compare_exchange(id, 0, Ordering::AcqRel, Ordering::Relaxed);
    tracing::info!(acquisition = id, frames = rec.assigned.load(Ordering::Relaxed), "all frames assigned");
}

/// Ends the active acquisition if a stop was requested (also when no frame arrives to trigger it).
pub fn finish_stopped(area: &PipelineArea) {
    if let Some(rec) = area.active()
        && rec.stop_requested.load(Ordering::Acquire) != 0
        && rec.state().takes_frames()
    {
        end(area, rec);
    }
}

/// Ends acquisition `rec` because no frame came for `idle` (the stream went quiet before it had its frames): its
/// file is finished with the frames so far, and the reason says so.
pub fn end_idle(area: &PipelineArea, rec: &AcquisitionRecord, idle: Duration) {
    let id = rec.id.load(Ordering::Acquire);
    let (got, want) = (rec.assigned.load(Ordering::Acquire), rec.frames.load(Ordering::Relaxed));
    let text = format!(
        "the stream went idle: no frame for {:.1} s (stream_idle_timeout_s) after {got} of {} frames",
        idle.as_secs_f64(),
        if want == shm_protocol::pipeline::CONTINUOUS { "unlimited".to_owned() } else { want.to_string() }
    );
    if rec.claim_end(EndReason::StreamIdle, &text) {
        tracing::warn!(acquisition = id, "{text}; ending it");
    }
    end(area, rec);
}
