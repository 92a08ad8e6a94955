//! A stage's process as the supervisor holds it: a child it started, or a stage it adopted from a supervisor
//! that died (no longer anyone's child but init's: watched and stopped through a pidfd, its exit status unknown).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::Duration;

/// How a stage's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A child's exit status.
    Status(ExitStatus),
    /// An adopted process ended; only its parent (init) learns how.
    Unknown,
}

impl Exit {
    /// The exit in words.
    pub fn describe(self) -> String {
        match self {
            Exit::Status(st) => crate::stages::describe_exit(st),
            Exit::Unknown => "ended (adopted from an earlier supervisor: its exit status is unknown)".into(),
        }
    }
}

/// A stage's process.
#[derive(Debug)]
pub enum StageProcess {
    /// Started by this supervisor.
    Child(Child),
    /// Started by an earlier supervisor that died; `pidfd` refers to it whatever happens to its pid.
    Adopted {
        /// Its pid.
        pid: u32,
        /// A pidfd of it (readable once it has ended).
        pidfd: OwnedFd,
    },
}

impl From<Child> for StageProcess {
    fn from(c: Child) -> Self {
        StageProcess::Child(c)
    }
}

impl StageProcess {
    /// Adopts process `pid` (it must be alive: a pidfd is opened on it now).
    pub fn adopt(pid: u32) -> std::io::Result<Self> {
        let p = rustix::process::Pid::from_raw(pid as i32).ok_or(std::io::ErrorKind::InvalidInput)?;
        let pidfd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())?;
        Ok(StageProcess::Adopted { pid, pidfd })
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        match self {
            StageProcess::Child(c) => c.id(),
            StageProcess::Adopted { pid, .. } => *pid,
        }
    }

    /// The pidfd of an adopted process (a child's is opened by the watcher).
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            StageProcess::Child(_) => None,
            StageProcess::Adopted { pidfd, .. } => Some(pidfd.as_fd()),
        }
    }

    /// How it ended, if it has (reaping a child).
    pub fn try_wait(&mut self) -> std::io::Result<Option<Exit>> {
        match self {
            StageProcess::Child(c) => Ok(c.try_wait()?.map(Exit::Status)),
            StageProcess::Adopted { pidfd, .. } => Ok(ended(pidfd.as_fd(), Duration::ZERO).then_some(Exit::Unknown)),
        }
    }

    /// Sends it SIGKILL.
    pub fn kill(&mut self) -> std::io::Result<()> {
        match self {
            StageProcess::Child(c) => c.kill(),
            StageProcess::Adopted { pidfd, .. } => {
                Ok(rustix::process::pidfd_send_signal(pidfd.as_fd(), rustix::process::Signal::KILL)?)
            }
        }
    }

    /// Sends it SIGTERM (through its pidfd if adopted: its pid may be reused once it ended).
    pub fn terminate(&self) {
        match self {
            StageProcess::Child(c) => {
                if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
                }
            }
            StageProcess::Adopted { pidfd, .. } => {
                let _ = rustix::process::pidfd_send_signal(pidfd.as_fd(), rustix::process::Signal::TERM);
            }
        }
    }

    /// Waits until it ended.
    pub fn wait(&mut self) -> std::io::Result<Exit> {
        match self {
            StageProcess::Child(c) => Ok(Exit::Status(c.wait()?)),
            StageProcess::Adopted { pidfd, .. } => {
                while !ended(pidfd.as_fd(), Duration::from_secs(1)) {}
                Ok(Exit::Unknown)
            }
        }
    }
}

/// Whether the process of `pidfd` has ended, waiting up to `timeout` (a pidfd reads as readable once it has).
pub fn ended(pidfd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
    let ts = rustix::event::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: i64::from(timeout.subsec_nanos()) };
    rustix::event::poll(&mut fds, Some(&ts)).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_process_is_watched_and_killed_through_its_pidfd() {
        let mut child = std::process::Command::new("sleep").arg("10").spawn().expect("sleep");
        let mut p = StageProcess::adopt(child.id()).expect("pidfd");
        assert_eq!(p.id(), child.id());
        assert!(p.pidfd().is_some());
        assert_eq!(p.try_wait().expect("try_wait"), None);
        p.kill().expect("kill");
        // The kernel makes the pidfd readable once the process has ended (a zombie, not yet reaped, has).
        assert_eq!(p.wait().expect("wait"), Exit::Unknown);
        let _ = child.wait();
        assert!(Exit::Unknown.describe().contains("unknown"));
    }
}
