//! The debugging commands: `restart` a stage, `detach` it to run it by hand, `attach` it back. Each answers
//! only once its change is done (the old process has exited; a new one, if any, is ready), so that a command
//! that follows it in a script finds the pipeline as it expects; or with an error that says what is not done.

use std::time::{Duration, Instant};

use shm_protocol::messages::{StageCommand, StopReason};
use shm_protocol::pipeline::Stage;

use super::{Supervisor, process_alive};
use crate::stage_state::Refused;
use crate::stages;

/// How long a stage asked to stop has to drain and exit before the supervisor kills it: a drain is what is in
/// its input ring (at most a few hundred ms of frames); 10 s is the time `attach` always gave a hand-run one.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long a killed process may take to be reaped (the watcher reaps it the moment its pidfd says so).
const REAP_WAIT: Duration = Duration::from_secs(5);
/// How long a new process of the supervisor's may take to say Ready (attaching the region takes a few ms; a
/// restart after the old one drained, or under a loaded machine, takes longer).
const READY_WAIT: Duration = Duration::from_secs(20);

impl Supervisor {
    /// `ringdaq restart`: the stage finishes what it holds and exits; the watcher starts a new one at once.
    /// Answers once the new process is ready.
    pub(super) fn restart_stage(&self, st: Stage) -> anyhow::Result<()> {
        let old = self.lock().stages[st as usize].state.request_restart()?;
        tracing::info!(stage = st.name(), pid = old, "restart requested");
        self.wait_until(EXIT_WAIT + READY_WAIT, || {
            let g = self.lock();
            let s = &g.stages[st as usize].state;
            s.is_ready() && s.supervised_pid().is_some_and(|p| p != old) && !process_alive(old)
        })
        .map_err(|waited| {
            anyhow::anyhow!(
                "the {} (pid {old}) was asked to restart, but no new process is ready after {} s; see `ringdaq status`",
                st.name(),
                waited.as_secs()
            )
        })?;
        tracing::info!(stage = st.name(), pid = self.lock().stages[st as usize].state.pid(), "restarted");
        Ok(())
    }

    /// `ringdaq detach`: stops the stage's process for good (until `attach`) and says how to run it by hand.
    /// Answers once that process has exited (it is killed if it does not drain in [`EXIT_WAIT`]), so that the
    /// command it prints can be run at once.
    pub(super) fn detach_stage(&self, st: Stage) -> anyhow::Result<String> {
        let command = stages::command_line(st, &self.control_path, &self.cfg)?;
        self.lock().stages[st as usize].state.detach()?;
        let leaving = || self.lock().stages[st as usize].state.leaving_pid();
        if let Some(pid) = leaving() {
            tracing::info!(stage = st.name(), pid, "detaching: waiting for the supervisor's process to exit");
            if self.wait_until(EXIT_WAIT, || leaving().is_none()).is_err()
                && let Some(pid) = leaving()
            {
                tracing::warn!(
                    stage = st.name(),
                    pid,
                    "the detached process did not exit in {EXIT_WAIT:?}; killing it"
                );
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                self.wait_until(REAP_WAIT, || leaving().is_none()).map_err(|_| {
                    anyhow::anyhow!(
                        "the {} is detached, but its process {pid} has not exited; see `ringdaq status`",
                        st.name()
                    )
                })?;
            }
        }
        tracing::info!(stage = st.name(), "detached: run it by hand with `{command}`");
        Ok(command)
    }

    /// `ringdaq attach`: tells a hand-run process to stop, waits until it is gone, starts the stage again, and
    /// answers once the supervisor's new process is ready.
    pub(super) fn attach_stage(&self, st: Stage) -> anyhow::Result<()> {
        // A hand-run process that says hello while the one before is being stopped is stopped in turn (a user
        // starting it in a loop gets three turns).
        let mut turn = 0;
        loop {
            turn += 1;
            let hand_run = self.lock().stages[st as usize].state.attach_begin()?;
            if let Some((pid, conn)) = hand_run {
                self.stop_hand_run(st, pid, conn);
            }
            match self.lock().stages[st as usize].state.attach_end(Instant::now()) {
                Err(Refused::HandRunAttached(..)) if turn < 3 => continue,
                r => break r?,
            }
        }
        tracing::info!(stage = st.name(), "attached: the supervisor runs it again");
        self.wait_until(READY_WAIT, || {
            let g = self.lock();
            let s = &g.stages[st as usize].state;
            s.is_ready() && s.supervised_pid().is_some()
        })
        .map_err(|waited| {
            anyhow::anyhow!(
                "the {} is attached, but the supervisor's process is not ready after {} s; see `ringdaq status`",
                st.name(),
                waited.as_secs()
            )
        })
    }

    /// Tells a hand-run process to stop and waits until it is gone: two processes must never run one stage. It
    /// drains and exits on Shutdown; one that does not in [`EXIT_WAIT`] is killed. One that said hello but not
    /// yet Ready (no `conn`) is told so when its Ready comes, and waited for too.
    fn stop_hand_run(&self, st: Stage, pid: u32, conn: Option<shm_protocol::Connection>) {
        if let Some(conn) = &conn {
            let _ = conn.send(&StageCommand::Shutdown { why: StopReason::Attach });
            let t = Instant::now();
            while !conn.poll_readable(Duration::from_millis(20)).unwrap_or(true) && t.elapsed() < EXIT_WAIT {}
        }
        // Its connection closed: it is exiting (500 ms for that); without one, it has its whole drain time.
        let exit = if conn.is_some() { Duration::from_millis(500) } else { EXIT_WAIT };
        if self.wait_until(exit, || !process_alive(pid)).is_err()
            && let Some(p) = rustix::process::Pid::from_raw(pid as i32)
        {
            tracing::warn!(stage = st.name(), pid, "hand-run stage did not stop; killing it");
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            let _ = self.wait_until(REAP_WAIT, || !process_alive(pid));
        }
    }

    /// Waits (polling every 5 ms) until `done`, for at most `limit`; `Err(waited)` if it timed out or the
    /// pipeline began shutting down.
    pub(super) fn wait_until(&self, limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), Duration> {
        let t = Instant::now();
        loop {
            if done() {
                return Ok(());
            }
            if t.elapsed() > limit || self.shutting_down() {
                return Err(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
