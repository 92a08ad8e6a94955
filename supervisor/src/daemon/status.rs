//! The pipeline's status: stages, counters, rates, rings and recent acquisitions.

use std::time::{Duration, Instant};

use shm_protocol::messages::{StageStatus, StatusReport};
use shm_protocol::pipeline::{self, BLOCK_RING, FRAME_RING, Stage};

use super::Supervisor;

/// Two samples of the counters, a second or so apart, and the rates between them.
#[derive(Debug, Default)]
pub(super) struct Rates {
    last: Option<(Instant, std::collections::BTreeMap<String, u64>)>,
    current: Vec<(String, f64)>,
}

impl Supervisor {
    /// Every second: the rates since the previous sample.
    pub(super) fn sample_rates(&self) {
        let mut r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if r.last.as_ref().is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_secs(1)) {
            return;
        }
        let c = self.area().counters();
        if let Some((t, prev)) = &r.last {
            let dt = now.duration_since(*t).as_secs_f64();
            let d = |names: &[&str]| {
                names
                    .iter()
                    .map(|n| c.get(*n).copied().unwrap_or(0).saturating_sub(prev.get(*n).copied().unwrap_or(0)))
                    .sum::<u64>() as f64
                    / dt
            };
            r.current = vec![
                ("datagrams_per_s".into(), d(&["receiver.datagrams"])),
                ("frames_per_s".into(), d(&["assembler.frames_complete", "assembler.frames_incomplete"])),
                ("receive_mb_per_s".into(), d(&["receiver.bytes"]) / 1e6),
                ("write_mb_per_s".into(), d(&["writer.bytes"]) / 1e6),
                // Cores busy compressing (CPU seconds a second, all compression threads) and what they write.
                ("compress_cores".into(), d(&["writer.compress_cpu_ns"]) / 1e9),
                ("compressed_mb_per_s".into(), d(&["writer.compressed_bytes"]) / 1e6),
            ];
        }
        r.last = Some((now, c));
    }

    /// The pipeline's state.
    pub fn status(&self) -> StatusReport {
        let area = self.area();
        let g = self.lock();
        let stages = Stage::ALL
            .iter()
            .map(|&st| {
                let s = &g.stages[st as usize];
                StageStatus {
                    name: st.name().into(),
                    state: s.state.label(),
                    pid: s.state.pid(),
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                    uptime_s: s.state.uptime().as_secs(),
                }
            })
            .collect();
        let next_id = g.next_acquisition;
        drop(g);
        let used = |ring: usize| {
            self.region.ring(ring).ok().map_or(0, |r| {
                let p = r.published();
                r.min_gating_cursor().map_or(0, |c| p.saturating_sub(c))
            })
        };
        let acquisitions = (next_id.saturating_sub(pipeline::ACQUISITION_SLOTS as u64).max(1)..next_id)
            .filter_map(|id| self.acquisition_status(id))
            .collect();
        StatusReport {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            // A part of the detector says which (`is sectors 0-3`); the whole, its mode's name as ever.
            mode: self.cfg.view().map_or_else(|_| self.cfg.mode.to_string(), |v| v.to_string()),
            stages,
            counters: area.counters().into_iter().collect(),
            rates: self.rates.lock().unwrap_or_else(|p| p.into_inner()).current.clone(),
            block_ring_slots: self.region.ring(BLOCK_RING).map_or(0, |r| r.slot_count()),
            frame_ring_slots: self.region.ring(FRAME_RING).map_or(0, |r| r.slot_count()),
            block_ring_used: used(BLOCK_RING),
            frame_ring_used: used(FRAME_RING),
            acquisitions,
        }
    }
}
