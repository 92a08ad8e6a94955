//! The debugging commands: `restart` a stage, `detach` it to run it by hand, `attach` it back.

use std::time::{Duration, Instant};

use shm_protocol::messages::StageCommand;
use shm_protocol::pipeline::Stage;

use super::{Supervisor, process_alive};
use crate::stages;

impl Supervisor {
    /// `ringdaq restart`: the stage finishes what it holds and exits; the watcher starts a new one at once.
    pub(super) fn restart_stage(&self, st: Stage) -> anyhow::Result<()> {
        let pid = self.lock().stages[st as usize].state.request_restart()?;
        tracing::info!(stage = st.name(), pid, "restart requested");
        Ok(())
    }

    /// `ringdaq detach`: stops the stage's process for good (until `attach`) and says how to run it by hand.
    pub(super) fn detach_stage(&self, st: Stage) -> anyhow::Result<String> {
        let command = stages::command_line(st, &self.control_path, &self.cfg)?;
        self.lock().stages[st as usize].state.detach()?;
        tracing::info!(stage = st.name(), "detached: run it by hand with `{command}`");
        Ok(command)
    }

    /// `ringdaq attach`: tells a hand-run process to stop, waits until it is gone, and starts the stage again.
    pub(super) fn attach_stage(&self, st: Stage) -> anyhow::Result<()> {
        let hand_run = self.lock().stages[st as usize].state.attach_begin()?;
        if let Some((pid, Some(conn))) = hand_run {
            // Two processes must never run one stage: wait for the hand-run one to end its connection (it
            // drains and exits on Shutdown), and kill it if it does not.
            let _ = conn.send(&StageCommand::Shutdown);
            let t = Instant::now();
            while !conn.poll_readable(Duration::from_millis(20)).unwrap_or(true) {
                if t.elapsed() > Duration::from_secs(10) {
                    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                        tracing::warn!(stage = st.name(), pid, "hand-run stage did not stop; killing it");
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                    break;
                }
            }
            let t = Instant::now();
            while process_alive(pid) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.lock().stages[st as usize].state.attach_end(Instant::now())?;
        tracing::info!(stage = st.name(), "attached: the supervisor runs it again");
        Ok(())
    }
}
