//! Assigning frames to the armed acquisition, as they are published.
//!
//! The supervisor arms an acquisition in the region; the assembler, which publishes frames in order, decides
//! which frame is index 0 (immediate: the first whose first block arrived after arming; flag: the first such
//! frame with the sync flag) and numbers the following ones, until the requested count or a stop request.

use std::sync::atomic::Ordering;

use shm_protocol::pipeline::{AcquisitionRecord, NO_INDEX, PipelineArea, acq_state, sync_mode};

/// The acquisition id and index for the frame about to be published as frame-ring `seq`; `(0, NO_INDEX)` if it
/// belongs to none. `has_blocks`, `first_block_seq` and `sync` describe the frame.
pub fn assign(
    area: &PipelineArea,
    has_blocks: bool,
    first_block_seq: u64,
    sync: bool,
    frame_id: u32,
    seq: u64,
) -> (u64, u64) {
    let Some(rec) = area.active() else {
        return (0, NO_INDEX);
    };
    let id = rec.id.load(Ordering::Acquire);
    let stop = rec.stop_requested.load(Ordering::Acquire) != 0;
    match rec.state.load(Ordering::Acquire) {
        acq_state::ARMED => {
            if stop {
                end(area, rec);
                return (0, NO_INDEX);
            }
            let after_arm = has_blocks && first_block_seq >= rec.armed_block_seq.load(Ordering::Relaxed);
            let flag_ok = rec.sync.load(Ordering::Relaxed) == sync_mode::IMMEDIATE || sync;
            if !(after_arm && flag_ok) {
                return (0, NO_INDEX);
            }
            rec.first_seq.store(seq, Ordering::Relaxed);
            rec.state.store(acq_state::RUNNING, Ordering::Release);
            tracing::info!(acquisition = id, frame_id, "acquisition started");
            next_index(area, rec, id)
        }
        acq_state::RUNNING if stop => {
            end(area, rec);
            (0, NO_INDEX)
        }
        acq_state::RUNNING => next_index(area, rec, id),
        _ => (0, NO_INDEX),
    }
}

fn next_index(area: &PipelineArea, rec: &AcquisitionRecord, id: u64) -> (u64, u64) {
    let index = rec.assigned.load(Ordering::Relaxed);
    rec.assigned.store(index + 1, Ordering::Release);
    if index + 1 >= rec.frames.load(Ordering::Relaxed) {
        end(area, rec);
    }
    (id, index)
}

/// Marks every frame of `rec` as assigned and clears it as the active acquisition.
pub fn end(area: &PipelineArea, rec: &AcquisitionRecord) {
    let id = rec.id.load(Ordering::Acquire);
    rec.state.store(acq_state::ASSIGNED, Ordering::Release);
    let _ = area.active_acquisition.compare_exchange(id, 0, Ordering::AcqRel, Ordering::Relaxed);
    tracing::info!(acquisition = id, frames = rec.assigned.load(Ordering::Relaxed), "all frames assigned");
}

/// Ends the active acquisition if a stop was requested (also when no frame arrives to trigger it).
pub fn finish_stopped(area: &PipelineArea) {
    if let Some(rec) = area.active() {
        let st = rec.state.load(Ordering::Acquire);
        if rec.stop_requested.load(Ordering::Acquire) != 0 && (st == acq_state::ARMED || st == acq_state::RUNNING) {
            end(area, rec);
        }
    }
}
