//! Watching the stages: starting them, noticing deaths, restarting within the budget, killing hung ones, and
//! stopping them in order at shutdown. All from one thread. Stages adopted from a supervisor that died are
//! watched the same way, through their pidfds (they are not this process's children).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shm_protocol::messages::{StageCommand, StopReason};
use shm_protocol::pipeline::{self, AcquisitionState, BLOCK_RING, EndReason, FRAME_RING, Stage};

use super::Supervisor;
use crate::restart_policy::{Budget, Death, Decision};
use crate::stages;

/// What the watcher knows of a stage's progress, for hang detection.
#[derive(Debug, Default)]
struct Progress {
    pid: u32,
    heartbeat: u64,
    /// Since when the stage has had input without its heartbeat moving.
    stalled_since: Option<Instant>,
}

/// Longest sleep of the stage watcher: how soon it notices a stop signal or a hang (deaths and due restarts
/// wake it at once). Longer costs responsiveness, shorter costs an idle machine CPU.
const WATCH_TICK: Duration = Duration::from_millis(100);

impl Supervisor {
    /// Starts the stages, restarts the ones that die (within the budget), kills the ones that hang, and on
    /// shutdown stops them in order.
    ///
    /// Deaths are noticed through a pidfd per child (readable the moment the process ends), so a restart does not
    /// wait for a polling period; the loop wakes at least every [`WATCH_TICK`] for hangs, signals and restarts
    /// due after a backoff.
    pub(super) fn watch(&self, stop_flag: &AtomicBool) {
        let mut pidfds: [Option<OwnedFd>; 3] = Default::default();
        let mut progress: [Progress; 3] = Default::default();
        for st in Stage::ALL {
            let adopted = self.lock().stages[st as usize].state.adopted_pidfd();
            pidfds[st as usize] = match adopted {
                Some(fd) => Some(fd),
                None => self.start(st),
            };
        }
        while !self.shutting_down() {
            if stop_flag.load(Ordering::Relaxed) {
                tracing::info!("signal received: shutting down");
                self.request_shutdown();
                break;
            }
            self.wait_for_exit(&pidfds);
            for st in Stage::ALL {
                if let Some(fd) = self.check_stage(st) {
                    pidfds[st as usize] = fd;
                }
            }
            self.check_hangs(&mut progress);
            self.sample_rates();
            self.drop_held_subscriptions();
        }
        self.stop_all();
    }

    /// Sleeps until a child ends, a restart is due, or [`WATCH_TICK`] passes.
    fn wait_for_exit(&self, pidfds: &[Option<OwnedFd>; 3]) {
        let mut timeout = WATCH_TICK;
        {
            let g = self.lock();
            for s in &g.stages {
                if let Some(at) = s.state.restart_at() {
                    timeout = timeout.min(at.saturating_duration_since(Instant::now()));
                }
            }
        }
        let mut fds: Vec<rustix::event::PollFd<'_>> =
            pidfds.iter().flatten().map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)).collect();
        if fds.is_empty() && timeout.is_zero() {
            return;
        }
        let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: timeout.as_nanos().min(999_999_999) as i64 };
        // EINTR (a signal) only ends the sleep early.
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }

    /// Kills a stage that has had input for `hang_timeout_ms` without its heartbeat moving (stopped, deadlocked,
    /// or spinning without progress); its death then takes the normal restart path.
    fn check_hangs(&self, progress: &mut [Progress; 3]) {
        let limit = Duration::from_millis(self.cfg.supervisor.hang_timeout_ms);
        if limit.is_zero() {
            return;
        }
        let area = self.area();
        let now = Instant::now();
        for st in Stage::ALL {
            let p = &mut progress[st as usize];
            let (pid, watched) = self.lock().stages[st as usize].state.hang_watch();
            let beat = area.stage(st).heartbeat.load(Ordering::Relaxed);
            if pid != p.pid || beat != p.heartbeat || !watched || !self.has_input(st) {
                *p = Progress { pid, heartbeat: beat, stalled_since: None };
                continue;
            }
            let since = *p.stalled_since.get_or_insert(now);
            if now.duration_since(since) < limit {
                continue;
            }
            let why = format!("hung: no progress for {} ms while its input waited", limit.as_millis());
            // Only the process that stalled is killed: by now it may have ended and been replaced.
            if self.lock().stages[st as usize].state.kill_hung(pid, why.clone()) {
                tracing::error!(stage = st.name(), pid, "{why}; killed it");
            }
            p.stalled_since = None;
        }
    }

    /// Whether a stage has work waiting for it that it is free to do (its output has room).
    fn has_input(&self, st: Stage) -> bool {
        let ring_full = |ring: usize| {
            self.region
                .ring(ring)
                .is_ok_and(|r| r.min_gating_cursor().is_some_and(|c| r.published().saturating_sub(c) >= r.slot_count()))
        };
        let unread = |ring: usize, cursor: usize| {
            self.region.ring(ring).is_ok_and(|r| r.consumer_state(cursor).is_ok_and(|(c, _, _)| r.published() > c))
        };
        match st {
            Stage::Receiver => {
                !ring_full(BLOCK_RING)
                    && self.sockets.iter().any(|s| rustix::io::ioctl_fionread(s).is_ok_and(|n| n > 0))
            }
            Stage::Assembler => unread(BLOCK_RING, pipeline::ASSEMBLER_CURSOR) && !ring_full(FRAME_RING),
            Stage::Writer => unread(FRAME_RING, pipeline::WRITER_CURSOR),
        }
    }

    /// Starts a stage; returns a pidfd that becomes readable when it ends (None if the kernel has no pidfds:
    /// the watcher's tick then notices the death).
    fn start(&self, st: Stage) -> Option<OwnedFd> {
        let child = match stages::spawn(st, &self.control_path, &self.cfg) {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!("{e:#}"));
                return None;
            }
        };
        let pidfd =
            rustix::process::pidfd_open(rustix::process::Pid::from_child(&child), rustix::process::PidfdFlags::empty())
                .map_err(|e| tracing::debug!(error = %e, "no pidfd; watching by polling"))
                .ok();
        let pid = child.id();
        let refused = self.lock().stages[st as usize].state.started(child, Instant::now());
        if let Err(mut child) = refused {
            // Detached while it was being spawned: the stage is the user's now, this process must not run it.
            tracing::info!(stage = st.name(), pid, "stage detached while starting; stopping the new process");
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // The stage records its own pid once it runs (the assembler takes the receiver's as "a receiver is
        // receiving"); the supervisor only clears it when the stage dies.
        self.area().stage(st).starts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stage = st.name(), pid, "stage started");
        self.record_pipeline();
        pidfd
    }

    /// Reaps a stage that ended and schedules its restart, or starts one whose restart is due (returning the new
    /// child's pidfd).
    fn check_stage(&self, st: Stage) -> Option<Option<OwnedFd>> {
        let mut g = self.lock();
        let slot = &mut g.stages[st as usize];
        if let Some(at) = slot.state.restart_at() {
            if Instant::now() >= at {
                drop(g);
                return Some(self.start(st));
            }
            return None;
        }
        let ended = slot.state.reap()?;
        let how = ended.describe();
        tracing::warn!(stage = st.name(), "stage {how}");
        slot.last_exit = Some(how.clone());
        self.area().stage(st).pid.store(0, Ordering::Relaxed);
        if ended.detached {
            // The user runs it now; nothing to restart.
            return Some(None);
        }
        let now = Instant::now();
        let death = Death {
            stage: st.name(),
            how: &how,
            at: now,
            started_at: ended.started_at,
            was_ready: ended.was_ready,
            requested: ended.requested,
        };
        match slot.history.on_death(&death, Budget::from(&self.cfg.supervisor)) {
            Decision::GiveUp { reason } => {
                drop(g);
                self.fail(reason);
                Some(None)
            }
            Decision::RestartNow => {
                slot.restarts += 1;
                slot.state.schedule(now);
                drop(g);
                Some(self.start(st))
            }
            Decision::RestartAt(at) => {
                slot.restarts += 1;
                slot.state.schedule(at);
                Some(None)
            }
        }
    }

    /// Stops the stages in pipeline order, each after the one before it has drained into it. The running
    /// acquisition ends with the frames so far, its file finished: by the writer as it drains, or, if no writer
    /// runs (it died past its budget), here (see `finish_acquisitions`).
    fn stop_all(&self) {
        if let Some(rec) = self.area().active() {
            // Unless a reason was recorded first (the restart budget, a user's stop).
            if rec.state().takes_frames() {
                rec.claim_end(
                    EndReason::Shutdown,
                    "the pipeline was shut down before the acquisition had all its frames",
                );
            }
            rec.stop_requested.store(1, Ordering::Release);
        }
        // A writer that is gone (out of its budget, or between restarts) makes no room in the frame ring, so the
        // assembler could not drain into it: this process writes in its place while the stages before it stop.
        let writer_gone = self.lock().stages[Stage::Writer as usize].state.pid() == 0;
        let standing_in = AtomicBool::new(writer_gone);
        std::thread::scope(|s| {
            if writer_gone {
                let (span, standing_in) = (tracing::Span::current(), &standing_in);
                s.spawn(move || span.in_scope(|| self.stand_in_writer(standing_in)));
            }
            self.stop_stage(Stage::Receiver);
            self.stop_stage(Stage::Assembler);
            standing_in.store(false, Ordering::Release);
        });
        self.stop_stage(Stage::Writer);
        self.finish_acquisitions();
    }

    /// Stops one stage: asks it to finish what it holds and exit, and kills it after 10 s.
    fn stop_stage(&self, st: Stage) {
        let stopping = self.lock().stages[st as usize].state.stop();
        let Some((mut child, conn)) = stopping else { return };
        if let Some(c) = &conn {
            let _ = c.send(&StageCommand::Shutdown { why: StopReason::PipelineShutdown });
        } else {
            child.terminate();
        }
        let t = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st_)) => {
                    tracing::info!(stage = st.name(), "stage {}", st_.describe());
                    break;
                }
                Ok(None) if t.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    tracing::warn!(stage = st.name(), "stage did not stop in 10 s; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        self.area().stage(st).pid.store(0, Ordering::Relaxed);
    }

    /// Lets go of the consumer lines held for the subscribers of a dead supervisor that did not come back within
    /// [`super::SUBSCRIPTION_HOLD`]: a gate nobody advances must not hold the pipeline.
    fn drop_held_subscriptions(&self) {
        let mut g = self.lock();
        if g.held_subscriptions.is_empty() {
            return;
        }
        let Ok(ring) = self.region.ring(FRAME_RING) else { return };
        g.held_subscriptions.retain(|&(index, since)| {
            if since.elapsed() < super::SUBSCRIPTION_HOLD {
                return true;
            }
            tracing::warn!(
                cursor = index,
                "a subscriber of the previous supervisor did not come back; its line is freed"
            );
            let _ = ring.release_consumer(index);
            false
        });
    }

    /// Writes in place of a writer that is gone, until `run` turns false, then drains: the writer crate's loop
    /// in this process, from the cursors and records in the region, as a restarted writer would.
    fn stand_in_writer(&self, run: &AtomicBool) {
        tracing::warn!("no writer runs: writing in its place while the pipeline stops");
        let cfg = writer::WriterConfig { direct_io: self.cfg.writer.direct_io };
        let r = writer::Writer::new(&self.region, cfg).and_then(|mut w| w.run(|| !run.load(Ordering::Acquire)));
        if let Err(e) = r {
            tracing::error!(error = %e, "writing in place of the writer failed");
        }
    }

    /// After the stages stopped: ends and finishes an acquisition that no stage did. An assembler that is gone
    /// (out of its budget) did not end the running one: its frames are those already assigned. A writer that is
    /// gone did not finish its file: it is finished here, in this process, as a restarted writer would (the
    /// writer crate, from the records and cursors in the region), so that the frames written stay a valid file.
    fn finish_acquisitions(&self) {
        let area = self.area();
        if let Some(rec) = area.active() {
            let id = rec.id.load(Ordering::Acquire);
            for from in [AcquisitionState::Armed, AcquisitionState::Running] {
                rec.transition(from, AcquisitionState::Assigned);
            }
            let _ = area.active_acquisition.compare_exchange(id, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        if area.acquisitions.iter().all(|r| r.id.load(Ordering::Acquire) == 0 || r.state().is_over()) {
            return;
        }
        tracing::warn!("an acquisition was not finished by the writer; finishing its file here");
        let cfg = writer::WriterConfig { direct_io: self.cfg.writer.direct_io };
        match writer::Writer::new(&self.region, cfg).and_then(|mut w| w.drain()) {
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "finishing the acquisition's file failed"),
        }
    }
}
