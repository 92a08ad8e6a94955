//! A stage's state as the supervisor sees it: an explicit state machine, moved only by its transitions.
//!
//! ```text
//!            started                ready(pid)              reap (death)
//!  Stopped ───────────▶ Starting ─────────────▶ Running ──────────────────▶ Stopped ─┐ policy:
//!  Restarting{at} ─────▶ (child, since)         (child, conn, since)                   │ schedule(at) ▶ Restarting
//!     ▲                     │ detach                │ detach                           │ or give up (stays Stopped)
//!     │ attach_end          ▼                       ▼
//!     └──────────────── Detached { leaving: the supervised process still stopping, hand_run: a process run by
//!                                  hand, once it says hello (pid), and its connection once it says Ready }
//! ```
//!
//! The status labels (`ringdaq status`, field `state`) are produced here and only here: [`StageState::label`];
//! their names are [`Label::as_str`], in the protocol's messages.
//! Which process may hold the stage is decided here and only here: [`StageState::admit`] answers every stage
//! hello (the supervisor's own process, started or restarted, and a process run by hand), and the stage is
//! never held by two processes at once.

use std::time::{Duration, Instant};

use shm_protocol::control::Connection;
use shm_protocol::messages::{StageCommand, StopReason};
use shm_protocol::pipeline::Stage;

use crate::stage_process::{Exit, StageProcess};

/// What `ringdaq status` says a stage is doing: the wire's enum (its names are public, `status --json`).
pub use shm_protocol::messages::StageLabel as Label;

/// A transition the state refuses; the message is the one the client sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// `restart` of a detached stage.
    #[error("the {0} is detached; attach it first")]
    RestartDetached(&'static str),
    /// `restart` of a stage with no process.
    #[error("the {0} is not running")]
    NotRunning(&'static str),
    /// `detach` twice.
    #[error("the {0} is detached already")]
    DetachedAlready(&'static str),
    /// `attach` of a stage that is not detached (or a hand-run hello for one).
    #[error("the {0} is not detached")]
    NotDetached(&'static str),
    /// `attach` while the supervised process, detached, has not ended yet.
    #[error("the supervisor's {0} is still stopping; try again")]
    StillStopping(&'static str),
    /// A second hand-run process while the first one's connection is open.
    #[error("a hand-run {0} (pid {1}) is attached already")]
    HandRunAttached(&'static str, u32),
    /// A hand-run hello while the supervisor's process, detached, has not exited yet.
    #[error(
        "the supervisor's {0} (pid {1}) is still stopping; a process run by hand may take the stage once it has exited"
    )]
    LeavingStillRuns(&'static str, u32),
    /// A stage hello from a process that is not the one the supervisor started.
    #[error("the {0} is process {1}, not {2}")]
    NotItsProcess(&'static str, u32, u32),
    /// A stage hello while the supervisor has no process for it (and it is not detached).
    #[error("no {0} is being started")]
    NotStarting(&'static str),
}

impl Refused {
    /// Whether a hello refused so may be accepted a moment later, without anyone acting: the supervisor's new
    /// process is recorded just after it is spawned (it may say hello first), and a detached one is exiting.
    pub fn is_transient(&self) -> bool {
        matches!(self, Refused::NotStarting(_) | Refused::LeavingStillRuns(..))
    }
}

/// Who a process that said hello as the stage is, as [`StageState::admit`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The process the supervisor started (or restarted) for the stage.
    Supervised,
    /// A process run by hand for the detached stage.
    HandRun,
}

/// A stage process the supervisor started (or adopted from a supervisor that died).
#[derive(Debug)]
struct Process {
    child: StageProcess,
    since: Instant,
    /// Set when the supervisor killed it as hung: why (its exit is described with it).
    hung: Option<String>,
    /// `ringdaq restart`: its coming exit is asked for; restart at once, outside the budget.
    restart_requested: bool,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to finish what it holds and exit, saying `why`: with a Shutdown command over its connection, else
    /// with SIGTERM.
    fn ask_to_stop(&self, conn: Option<&Connection>, why: StopReason) {
        let asked = conn.is_some_and(|c| c.send(&StageCommand::Shutdown { why }).is_ok());
        if !asked {
            self.child.terminate();
        }
    }
}

/// A process run by hand for a detached stage: its pid from its hello, its connection once it said Ready.
#[derive(Debug)]
struct HandRun {
    pid: u32,
    conn: Option<Connection>,
}

/// The states; [`StageState`] keeps it private so that its transitions are the only way to move.
#[derive(Debug)]
enum State {
    /// No process, none due.
    Stopped,
    /// The supervisor's process was spawned and has not said Ready.
    Starting { proc: Process },
    /// The supervisor's process said Ready on `conn`.
    Running { proc: Process, conn: Connection },
    /// A restart is due at `at`.
    Restarting { at: Instant },
    /// `leaving`: the supervised process, asked to stop when the stage was detached, and its connection if it
    /// had said Ready. `hand_run`: the process the user runs in its place.
    Detached { leaving: Option<(Process, Option<Connection>)>, hand_run: Option<HandRun> },
}

/// How a stage's process ended, as [`StageState::reap`] found it.
#[derive(Debug)]
pub struct Ended {
    /// How it ended.
    pub status: Exit,
    /// When it was started.
    pub started_at: Instant,
    /// Whether it had said Ready.
    pub was_ready: bool,
    /// Whether its exit was asked for by `ringdaq restart`.
    pub requested: bool,
    /// Whether the stage is detached (nothing restarts it).
    pub detached: bool,
    /// Why the supervisor killed it as hung, if it did.
    pub hung: Option<String>,
}

impl Ended {
    /// The exit in words, as `status` reports it (`last_exit`).
    pub fn describe(&self) -> String {
        let exit = self.status.describe();
        match &self.hung {
            Some(why) => format!("{why}; killed by the supervisor"),
            None if self.requested => format!("restarted on request ({exit})"),
            None if self.detached => format!("detached ({exit})"),
            None => exit,
        }
    }
}

/// One stage's state.
#[derive(Debug)]
pub struct StageState {
    stage: Stage,
    state: State,
}

/// Whether a stage's connection is open (the process at the other end has not closed it).
fn open(conn: &Connection) -> bool {
    !conn.poll_readable(Duration::ZERO).unwrap_or(true)
}

impl StageState {
    /// A stage that was never started.
    pub fn new(stage: Stage) -> Self {
        Self { stage, state: State::Stopped }
    }

    /// What `ringdaq status` says it is doing.
    ///
    /// A detached stage whose supervised process has said Ready and not yet closed its connection (it is
    /// draining) reads "detached (run by hand)", as it did before this state machine: "detached" has always
    /// meant that no process holds the stage, and the operating tests wait for it.
    pub fn label(&self) -> Label {
        match &self.state {
            State::Stopped => Label::Stopped,
            State::Starting { .. } => Label::Starting,
            State::Running { .. } => Label::Running,
            State::Restarting { .. } => Label::Restarting,
            State::Detached { leaving, hand_run } => {
                let conn = match hand_run {
                    Some(h) => h.conn.as_ref(),
                    None => leaving.as_ref().and_then(|(_, c)| c.as_ref()),
                };
                if conn.is_some_and(open) { Label::DetachedRunByHand } else { Label::Detached }
            }
        }
    }

    /// Whether a process holds the stage and has said Ready (what `Supervisor::ready` waits for).
    pub fn is_ready(&self) -> bool {
        match &self.state {
            State::Running { .. } => true,
            State::Detached { hand_run: Some(h), .. } => h.conn.is_some(),
            State::Detached { hand_run: None, leaving } => leaving.as_ref().is_some_and(|(_, c)| c.is_some()),
            State::Stopped | State::Starting { .. } | State::Restarting { .. } => false,
        }
    }

    /// Whether the stage is detached.
    pub fn is_detached(&self) -> bool {
        matches!(self.state, State::Detached { .. })
    }

    /// The process `status` reports: the supervisor's, else a hand-run one that said Ready; 0 for none.
    pub fn pid(&self) -> u32 {
        match &self.state {
            State::Starting { proc } | State::Running { proc, .. } => proc.pid(),
            State::Detached { leaving: Some((proc, _)), .. } => proc.pid(),
            State::Detached { leaving: None, hand_run: Some(HandRun { pid, conn: Some(_) }) } => *pid,
            _ => 0,
        }
    }

    /// A pidfd of the supervisor's process if it was adopted from a supervisor that died (a child's is opened
    /// by the watcher as it spawns it).
    pub fn adopted_pidfd(&self) -> Option<std::os::fd::OwnedFd> {
        match &self.state {
            State::Starting { proc } | State::Running { proc, .. } => {
                proc.child.pidfd().and_then(|fd| fd.try_clone_to_owned().ok())
            }
            _ => None,
        }
    }

    /// How long the supervisor's process has run (a hand-run one reports 0).
    pub fn uptime(&self) -> Duration {
        match &self.state {
            State::Starting { proc } | State::Running { proc, .. } => proc.since.elapsed(),
            State::Detached { leaving: Some((proc, _)), .. } => proc.since.elapsed(),
            _ => Duration::ZERO,
        }
    }

    /// The pid of the process the supervisor is starting or running for the stage (not detached).
    pub fn supervised_pid(&self) -> Option<u32> {
        match &self.state {
            State::Starting { proc } | State::Running { proc, .. } => Some(proc.pid()),
            _ => None,
        }
    }

    /// When a restart is due, if one is.
    pub fn restart_at(&self) -> Option<Instant> {
        match self.state {
            State::Restarting { at } => Some(at),
            _ => None,
        }
    }

    /// The pid the hang watch follows (0 for none), and whether it is watched now: the supervisor's process once
    /// it said Ready, until it is killed as hung. A hand-run process is not watched (it may sit in a debugger).
    pub fn hang_watch(&self) -> (u32, bool) {
        match &self.state {
            State::Starting { proc } => (proc.pid(), false),
            State::Running { proc, .. } => (proc.pid(), proc.hung.is_none()),
            State::Detached { leaving: Some((proc, conn)), .. } => (proc.pid(), conn.is_some() && proc.hung.is_none()),
            _ => (0, false),
        }
    }

    /// `Stopped`/`Restarting` → `Starting`: the watcher spawned `child`. Refused (the child is handed back, to be
    /// killed) if the stage was detached meanwhile or another process holds it.
    pub fn started(&mut self, child: impl Into<StageProcess>, now: Instant) -> Result<(), StageProcess> {
        let child = child.into();
        match self.state {
            State::Stopped | State::Restarting { .. } => {
                let proc = Process { child, since: now, hung: None, restart_requested: false };
                self.state = State::Starting { proc };
                Ok(())
            }
            _ => Err(child),
        }
    }

    /// `Starting` → `Running`: process `pid` said Ready on `conn` (a second Ready from it replaces the
    /// connection). Refused, handing the connection back, if `pid` is no longer the stage's process.
    pub fn ready(&mut self, pid: u32, conn: Connection) -> Result<(), Connection> {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting { proc } | State::Running { proc, .. } if proc.pid() == pid => {
                self.state = State::Running { proc, conn };
                Ok(())
            }
            other => {
                self.state = other;
                Err(conn)
            }
        }
    }

    /// Reaps the stage's process if it ended: `Starting`/`Running` → `Stopped` (the watcher then applies the
    /// restart policy), a detached one's leaving process is forgotten (the stage stays `Detached`).
    pub fn reap(&mut self) -> Option<Ended> {
        let child = match &mut self.state {
            State::Starting { proc } | State::Running { proc, .. } => &mut proc.child,
            State::Detached { leaving: Some((proc, _)), .. } => &mut proc.child,
            _ => return None,
        };
        let Ok(Some(status)) = child.try_wait() else { return None };
        let (proc, was_ready, detached) = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting { proc } => (proc, false, false),
            State::Running { proc, .. } => (proc, true, false),
            State::Detached { leaving: Some((proc, conn)), hand_run } => {
                self.state = State::Detached { leaving: None, hand_run };
                (proc, conn.is_some(), true)
            }
            other => {
                // Unreachable: the match above found a process in these states only.
                self.state = other;
                return None;
            }
        };
        Some(Ended {
            status,
            started_at: proc.since,
            was_ready,
            requested: proc.restart_requested,
            detached,
            hung: proc.hung,
        })
    }

    /// `Stopped` → `Restarting { at }`: a restart the policy decided. Ignored in any other state (the stage was
    /// detached or stopped meanwhile).
    pub fn schedule(&mut self, at: Instant) {
        if let State::Stopped = self.state {
            self.state = State::Restarting { at };
        }
    }

    /// Kills the supervisor's process `pid` as hung (its exit is then described so), through its handle: an
    /// adopted process is no child of this one, and its pid is free for reuse the moment it ends. False if `pid`
    /// is no longer the watched process.
    pub fn kill_hung(&mut self, pid: u32, why: String) -> bool {
        match &mut self.state {
            State::Running { proc, .. } | State::Detached { leaving: Some((proc, Some(_))), .. }
                if proc.pid() == pid =>
            {
                proc.hung = Some(why);
                if let Err(e) = proc.child.kill() {
                    tracing::warn!(stage = self.stage.name(), pid, error = %e, "killing the hung stage");
                }
                true
            }
            _ => false,
        }
    }

    /// `ringdaq restart`: asks the running process to stop; its exit restarts it at once, outside the budget.
    /// Returns its pid.
    pub fn request_restart(&mut self) -> Result<u32, Refused> {
        let name = self.stage.name();
        match &mut self.state {
            State::Starting { proc } => {
                proc.restart_requested = true;
                proc.ask_to_stop(None, StopReason::Restart);
                Ok(proc.pid())
            }
            State::Running { proc, conn } => {
                proc.restart_requested = true;
                proc.ask_to_stop(Some(conn), StopReason::Restart);
                Ok(proc.pid())
            }
            State::Detached { .. } => Err(Refused::RestartDetached(name)),
            State::Stopped | State::Restarting { .. } => Err(Refused::NotRunning(name)),
        }
    }

    /// `ringdaq detach`: any state → `Detached`; a process of the supervisor's is asked to stop (and is reaped
    /// as it ends), no restart is due any more.
    pub fn detach(&mut self) -> Result<(), Refused> {
        let leaving = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting { proc } => Some((proc, None)),
            State::Running { proc, conn } => Some((proc, Some(conn))),
            State::Stopped | State::Restarting { .. } => None,
            detached @ State::Detached { .. } => {
                self.state = detached;
                return Err(Refused::DetachedAlready(self.stage.name()));
            }
        };
        if let Some((proc, conn)) = &leaving {
            proc.ask_to_stop(conn.as_ref(), StopReason::Detach);
        }
        self.state = State::Detached { leaving, hand_run: None };
        Ok(())
    }

    /// The pid of the supervisor's process of a detached stage while it has not exited (been reaped) yet.
    pub fn leaving_pid(&self) -> Option<u32> {
        match &self.state {
            State::Detached { leaving: Some((proc, _)), .. } => Some(proc.pid()),
            _ => None,
        }
    }

    /// The one decision on a stage hello from process `pid`: accepted if `pid` is the process the supervisor
    /// started (or restarted) for the stage, or, while the stage is detached, if nobody else holds it (see
    /// [`StageState::hand_run_hello`]); the caller then hands it the region and records its Ready with
    /// [`StageState::ready`] or [`StageState::hand_run_ready`]. A refusal that [`Refused::is_transient`] may be
    /// retried a moment later.
    pub fn admit(&mut self, pid: u32) -> Result<Admitted, Refused> {
        let name = self.stage.name();
        match &self.state {
            State::Starting { proc } | State::Running { proc, .. } if proc.pid() == pid => Ok(Admitted::Supervised),
            State::Starting { proc } | State::Running { proc, .. } => {
                Err(Refused::NotItsProcess(name, proc.pid(), pid))
            }
            State::Stopped | State::Restarting { .. } => Err(Refused::NotStarting(name)),
            State::Detached { .. } => self.hand_run_hello(pid).map(|()| Admitted::HandRun),
        }
    }

    /// A process run by hand said hello as this detached stage: it holds the stage from now on, unless the
    /// supervisor's process has not exited yet, or an earlier hand-run one still holds it (its connection is
    /// open, or it said hello, has not said Ready yet and is alive).
    pub fn hand_run_hello(&mut self, pid: u32) -> Result<(), Refused> {
        let name = self.stage.name();
        let State::Detached { hand_run, leaving } = &mut self.state else {
            return Err(Refused::NotDetached(name));
        };
        if let Some((proc, _)) = leaving {
            return Err(Refused::LeavingStillRuns(name, proc.pid()));
        }
        match hand_run {
            Some(HandRun { pid: holder, conn: Some(c) }) if open(c) => {
                return Err(Refused::HandRunAttached(name, *holder));
            }
            Some(HandRun { pid: holder, conn: None }) if *holder != pid && crate::daemon::process_alive(*holder) => {
                return Err(Refused::HandRunAttached(name, *holder));
            }
            _ => {}
        }
        *hand_run = Some(HandRun { pid, conn: None });
        Ok(())
    }

    /// The hand-run process `pid` said Ready on `conn`. Refused, handing the connection back, if another one
    /// took the stage meanwhile or the stage was attached.
    pub fn hand_run_ready(&mut self, pid: u32, conn: Connection) -> Result<(), Connection> {
        match &mut self.state {
            State::Detached { hand_run: Some(h), .. } if h.pid == pid => {
                h.conn = Some(conn);
                Ok(())
            }
            _ => Err(conn),
        }
    }

    /// `ringdaq attach`, first half: the stage must be detached with its supervised process gone; hands back the
    /// hand-run process (pid, and its connection if it said Ready) for the caller to stop. The stage stays
    /// `Detached` until [`StageState::attach_end`].
    pub fn attach_begin(&mut self) -> Result<Option<(u32, Option<Connection>)>, Refused> {
        match &mut self.state {
            State::Detached { leaving: Some(_), .. } => Err(Refused::StillStopping(self.stage.name())),
            State::Detached { leaving: None, hand_run } => Ok(hand_run.take().map(|h| (h.pid, h.conn))),
            _ => Err(Refused::NotDetached(self.stage.name())),
        }
    }

    /// `ringdaq attach`, second half: `Detached` → `Restarting { at: now }`, so the watcher starts the stage.
    /// Refused while a process run by hand that said hello since [`StageState::attach_begin`] is alive (it runs
    /// as soon as it is welcomed): the caller stops it first, so that it and the supervisor's never run at once.
    pub fn attach_end(&mut self, now: Instant) -> Result<(), Refused> {
        match &self.state {
            State::Detached { leaving: None, hand_run: Some(h) } if crate::daemon::process_alive(h.pid) => {
                Err(Refused::HandRunAttached(self.stage.name(), h.pid))
            }
            State::Detached { leaving: None, .. } => {
                self.state = State::Restarting { at: now };
                Ok(())
            }
            State::Detached { leaving: Some(_), .. } => Err(Refused::StillStopping(self.stage.name())),
            _ => Err(Refused::NotDetached(self.stage.name())),
        }
    }

    /// Shutdown: hands back the process the supervisor runs (and its connection, if it said Ready) for the
    /// caller to stop; a hand-run process's connection is closed. The stage ends `Stopped` (`Detached` if it
    /// was).
    pub fn stop(&mut self) -> Option<(StageProcess, Option<Connection>)> {
        let (proc, conn, detached) = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting { proc } => (Some(proc), None, false),
            State::Running { proc, conn } => (Some(proc), Some(conn), false),
            State::Detached { leaving, hand_run: _ } => match leaving {
                Some((proc, conn)) => (Some(proc), conn, true),
                None => (None, None, true),
            },
            State::Stopped | State::Restarting { .. } => (None, None, false),
        };
        if detached {
            self.state = State::Detached { leaving: None, hand_run: None };
        }
        proc.map(|p| (p.child, conn))
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;

    /// A stand-in stage process that lives until it is killed (at most 10 s, should a test fail first).
    fn long_child() -> Child {
        Command::new("sleep").arg("10").spawn().expect("sleep")
    }

    fn kill(mut child: StageProcess) {
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits (on the condition, at most 10 s) until the stage's process has ended and is reaped.
    fn reap(s: &mut StageState) -> Ended {
        let t = Instant::now();
        loop {
            if let Some(e) = s.reap() {
                return e;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "the process did not end");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn pair() -> (Connection, Connection) {
        Connection::pair().expect("socketpair")
    }

    #[test]
    fn labels_are_the_public_words() {
        let all = [
            (Label::Running, "running"),
            (Label::Starting, "starting"),
            (Label::Restarting, "restarting"),
            (Label::Stopped, "stopped"),
            (Label::Detached, "detached"),
            (Label::DetachedRunByHand, "detached (run by hand)"),
        ];
        for (label, word) in all {
            assert_eq!(label.as_str(), word);
            assert_eq!(label.to_string(), word);
        }
    }

    #[test]
    fn a_stage_starts_runs_dies_and_is_scheduled() {
        let mut s = StageState::new(Stage::Assembler);
        assert_eq!((s.label(), s.pid(), s.is_ready()), (Label::Stopped, 0, false));
        let t0 = Instant::now();
        s.started(long_child(), t0).expect("start from stopped");
        let pid = s.pid();
        assert_eq!((s.label(), s.supervised_pid(), s.hang_watch()), (Label::Starting, Some(pid), (pid, false)));
        // Only its own process can make it ready.
        let (conn, _peer) = pair();
        let conn = s.ready(pid + 1, conn).expect_err("a stranger");
        s.ready(pid, conn).expect("its process");
        assert_eq!((s.label(), s.is_ready(), s.hang_watch()), (Label::Running, true, (pid, true)));
        // A second child cannot be recorded over a running one.
        kill(s.started(long_child(), t0).expect_err("already running"));
        assert!(s.kill_hung(pid, "hung: no progress".into()));
        assert_eq!(s.hang_watch(), (pid, false));
        assert!(!s.kill_hung(pid + 1, "not it".into()));
        let Some((child, _)) = s.stop().filter(|(c, _)| c.id() == pid) else { panic!("stop hands back the child") };
        kill(child);
        assert_eq!(s.label(), Label::Stopped);

        // Its death, reaped: Stopped until the policy schedules it.
        s.started(long_child(), t0).expect("start again");
        let pid = s.pid();
        s.ready(pid, pair().0).expect("ready");
        assert!(s.kill_hung(pid, "hung: no progress for 5000 ms while its input waited".into()));
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("pid"),
            rustix::process::Signal::KILL,
        );
        let e = reap(&mut s);
        assert_eq!((e.was_ready, e.requested, e.detached, e.started_at), (true, false, false, t0));
        assert_eq!(e.describe(), "hung: no progress for 5000 ms while its input waited; killed by the supervisor");
        assert_eq!((s.label(), s.pid()), (Label::Stopped, 0));
        let at = t0 + Duration::from_millis(10);
        s.schedule(at);
        assert_eq!((s.label(), s.restart_at()), (Label::Restarting, Some(at)));
        s.started(long_child(), at).expect("start from restarting");
        assert_eq!((s.label(), s.restart_at()), (Label::Starting, None));
        assert!(s.reap().is_none(), "still alive");
        // Scheduling is only for a stopped stage.
        s.schedule(at);
        assert_eq!(s.label(), Label::Starting);
        kill(s.stop().expect("child").0);
    }

    #[test]
    fn a_requested_restart_is_described_and_refused_without_a_process() {
        let mut s = StageState::new(Stage::Writer);
        assert_eq!(s.request_restart(), Err(Refused::NotRunning("writer")));
        s.started(Command::new("sleep").arg("10").spawn().expect("sleep"), Instant::now()).expect("start");
        let pid = s.pid();
        // Not yet connected: asked with SIGTERM.
        assert_eq!(s.request_restart(), Ok(pid));
        let e = reap(&mut s);
        assert!((e.requested, e.was_ready) == (true, false));
        assert_eq!(e.describe(), "restarted on request (killed by signal 15 (SIGTERM))");
        assert_eq!(s.label(), Label::Stopped);
    }

    #[test]
    fn a_running_stage_is_asked_to_stop_over_its_connection() {
        let mut s = StageState::new(Stage::Receiver);
        s.started(long_child(), Instant::now()).expect("start");
        let pid = s.pid();
        let (conn, mut peer) = pair();
        s.ready(pid, conn).expect("ready");
        assert_eq!(s.request_restart(), Ok(pid));
        let got = peer.recv::<StageCommand>().expect("a command");
        assert_eq!(got.msg, StageCommand::Shutdown { why: StopReason::Restart });
        kill(s.stop().expect("child").0);
    }

    #[test]
    fn detach_run_by_hand_and_attach() {
        let mut s = StageState::new(Stage::Assembler);
        s.started(long_child(), Instant::now()).expect("start");
        let pid = s.pid();
        let (conn, peer) = pair();
        s.ready(pid, conn).expect("ready");
        s.detach().expect("detach");
        assert_eq!(s.detach(), Err(Refused::DetachedAlready("assembler")));
        assert_eq!(s.request_restart(), Err(Refused::RestartDetached("assembler")));
        // The supervised process drains: as before, it reads as run by hand until its connection closes.
        assert_eq!((s.label(), s.pid(), s.is_ready(), s.supervised_pid()), (Label::DetachedRunByHand, pid, true, None));
        assert_eq!(s.attach_begin().err(), Some(Refused::StillStopping("assembler")));
        drop(peer);
        assert_eq!(s.label(), Label::Detached);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("pid"),
            rustix::process::Signal::TERM,
        );
        let e = reap(&mut s);
        assert!(e.detached);
        assert_eq!(e.describe(), "detached (killed by signal 15 (SIGTERM))");
        assert_eq!((s.label(), s.pid(), s.is_ready()), (Label::Detached, 0, false));
        // Nothing is started while detached.
        kill(s.started(long_child(), Instant::now()).expect_err("detached"));

        // A hand-run process says hello, then Ready.
        s.hand_run_hello(4242).expect("hello");
        assert_eq!((s.label(), s.pid()), (Label::Detached, 0));
        let (conn, hand_peer) = pair();
        let conn = s.hand_run_ready(4243, conn).expect_err("not the one that said hello");
        s.hand_run_ready(4242, conn).expect("ready");
        assert_eq!(
            (s.label(), s.pid(), s.is_ready(), s.hang_watch()),
            (Label::DetachedRunByHand, 4242, true, (0, false))
        );
        // A second one is refused while the first is connected, accepted once it is gone.
        assert_eq!(s.hand_run_hello(4300), Err(Refused::HandRunAttached("assembler", 4242)));
        drop(hand_peer);
        assert_eq!(s.label(), Label::Detached);
        s.hand_run_hello(4300).expect("the first one is gone");
        let (conn, _hand_peer) = pair();
        s.hand_run_ready(4300, conn).expect("ready");

        // Attach: the hand-run process is handed back to be stopped, then the stage is due to start.
        let Ok(Some((4300, Some(_)))) = s.attach_begin() else { panic!("the hand-run process") };
        assert_eq!(s.label(), Label::Detached);
        let now = Instant::now();
        s.attach_end(now).expect("attach");
        assert_eq!((s.label(), s.restart_at()), (Label::Restarting, Some(now)));
        assert_eq!(s.attach_begin().err(), Some(Refused::NotDetached("assembler")));
        assert_eq!(s.attach_end(now), Err(Refused::NotDetached("assembler")));
        assert_eq!(s.hand_run_hello(1), Err(Refused::NotDetached("assembler")));
    }

    /// One decision for every hello: the supervisor's process, strangers, and a hand-run process only once the
    /// detached process has exited and while nobody else holds the stage.
    #[test]
    fn admit_decides_every_hello() {
        let mut s = StageState::new(Stage::Assembler);
        assert_eq!(s.admit(1), Err(Refused::NotStarting("assembler")));
        assert!(s.admit(1).is_err_and(|r| r.is_transient()));
        s.started(long_child(), Instant::now()).expect("start");
        let pid = s.pid();
        assert_eq!(s.admit(pid), Ok(Admitted::Supervised));
        assert_eq!(s.admit(pid + 1), Err(Refused::NotItsProcess("assembler", pid, pid + 1)));
        assert!(s.admit(pid + 1).is_err_and(|r| !r.is_transient()));
        s.ready(pid, pair().0).expect("ready");
        assert_eq!(s.admit(pid), Ok(Admitted::Supervised), "a restarted session of its own process");

        // Detached: while the supervisor's process has not exited, a hand-run one waits (the two never run at once).
        s.detach().expect("detach");
        assert_eq!((s.leaving_pid(), s.admit(4242)), (Some(pid), Err(Refused::LeavingStillRuns("assembler", pid))));
        assert!(s.admit(4242).is_err_and(|r| r.is_transient()));
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("pid"),
            rustix::process::Signal::KILL,
        );
        assert!(reap(&mut s).detached);
        assert_eq!(s.leaving_pid(), None);
        // A live process that said hello holds the stage until it is gone, Ready or not.
        let me = std::process::id();
        // Above the largest pid the kernel gives (2^22 - 1): no process.
        const NO_PID: u32 = 1 << 22;
        assert_eq!(s.admit(me), Ok(Admitted::HandRun));
        assert_eq!(s.admit(NO_PID), Err(Refused::HandRunAttached("assembler", me)));
        assert_eq!(s.attach_end(Instant::now()), Err(Refused::HandRunAttached("assembler", me)));
        let (conn, peer) = pair();
        s.hand_run_ready(me, conn).expect("ready");
        assert_eq!(s.admit(NO_PID), Err(Refused::HandRunAttached("assembler", me)));
        drop(peer);
        assert_eq!(s.admit(NO_PID), Ok(Admitted::HandRun), "the first one's connection closed");
        // NO_PID is no process: it does not hold the stage against the next one.
        assert_eq!(s.admit(NO_PID + 1), Ok(Admitted::HandRun));
    }

    #[test]
    fn detaching_a_starting_or_restarting_stage() {
        let mut s = StageState::new(Stage::Writer);
        s.schedule(Instant::now());
        s.detach().expect("detach a restarting stage");
        assert_eq!((s.label(), s.restart_at()), (Label::Detached, None));
        assert_eq!(s.attach_begin().map(|h| h.is_none()), Ok(true));
        s.attach_end(Instant::now()).expect("attach");
        s.started(long_child(), Instant::now()).expect("start");
        // Not yet ready: asked to stop with SIGTERM.
        s.detach().expect("detach a starting stage");
        let e = reap(&mut s);
        assert!(e.detached && !e.was_ready);
        assert_eq!(s.label(), Label::Detached);
        assert!(s.stop().is_none());
        assert_eq!(s.label(), Label::Detached);
    }

    #[test]
    fn stopping_hands_back_the_connection() {
        let mut s = StageState::new(Stage::Receiver);
        assert!(s.stop().is_none());
        s.started(long_child(), Instant::now()).expect("start");
        let pid = s.pid();
        s.ready(pid, pair().0).expect("ready");
        let Some((child, Some(_conn))) = s.stop() else { panic!("child and connection") };
        kill(child);
        assert_eq!((s.label(), s.is_ready()), (Label::Stopped, false));
    }
}
