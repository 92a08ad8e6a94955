//! A running stage's tie to its supervisor, which survives the supervisor: see [`Supervision`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::{Connection, ControlError};
use crate::pipeline::messages::{PROTOCOL_VERSION, Reply, Request, Role, StageCommand};
use crate::pipeline::session::{Session, SessionError};
use crate::pipeline::{EndReason, FRAME_RING, Stage, pipeline_area, subscriber_lines};
use crate::region::{Access, Region};

/// How long a stage whose supervisor died waits for a successor before it ends the pipeline on its own
/// (`supervisor.orphan_timeout_s`): a `systemd` restart (`RestartSec=2`) or a user typing `ringdaq run` again
/// fits in it, and an abandoned pipeline does not run unsupervised for long.
pub const DEFAULT_ORPHAN_TIMEOUT: Duration = Duration::from_secs(30);

/// First pause between a stage's attempts to reach a successor; it doubles up to [`REJOIN_MAX_PAUSE`].
const REJOIN_FIRST_PAUSE: Duration = Duration::from_millis(1);

/// Longest pause between a stage's attempts to reach a successor: a new supervisor finds its stages within 10 ms
/// of binding the control socket (adoption aims at 100 ms from the kill), and a stage that waits tries 100 times
/// a second at most, one failing `connect` each (a few µs).
const REJOIN_MAX_PAUSE: Duration = Duration::from_millis(10);

/// How long a rejoining stage waits for the successor's answer; the successor answers once it has the region (a
/// few ms). The stage's own loop runs on meanwhile (the rejoin is on a thread of its own).
const REJOIN_ANSWER: Duration = Duration::from_secs(1);

/// Exit status of a stage that a successor refused (it is not the stage's process any more).
pub const REFUSED_EXIT: i32 = 75;

/// What the stage's loop and the thread that looks after the connection share.
#[derive(Debug)]
struct Shared {
    /// The supervisor said Shutdown.
    told_to_stop: AtomicBool,
    /// Since when no supervisor is connected, in ms after `epoch` plus one; 0 while one is.
    orphaned_at: AtomicU64,
    /// The stage gave up on a successor: the thread stops trying.
    given_up: AtomicBool,
    epoch: Instant,
    /// The connection to a successor, kept open here while the thread waits on it (see [`watch`]).
    _conn: Mutex<Option<Connection>>,
}

/// What the thread needs to rejoin a successor.
#[derive(Debug)]
struct Rejoin {
    stage: Stage,
    path: PathBuf,
    /// The region's memfd, then the detector's sockets: what a successor takes back.
    fds: Vec<OwnedFd>,
}

/// A running stage's tie to its supervisor, surviving the supervisor.
///
/// While the supervisor lives, commands come on the control connection. When it dies, the stage keeps moving
/// data and a thread of its own rejoins a successor on the same control socket path (trying every 1 to 10 ms,
/// noticing the death the moment the connection closes, whatever the stage's loop is doing), handing it back the
/// pipeline's descriptors: the region's memfd and the detector's sockets, which every stage holds so that any
/// one survivor can. After the orphan timeout without one, [`Supervision::should_stop`] ends the running
/// acquisition (`orphaned`) and stops the stages in pipeline order, each once the one before it has exited.
#[derive(Debug)]
pub struct Supervision {
    shared: Arc<Shared>,
    /// The connection and what rejoining a successor needs, until the stage's loop starts (its Ready goes on the
    /// connection); then the thread's.
    tie: Option<(Connection, Rejoin)>,
    stage: Stage,
    orphan_timeout: Duration,
}

impl Supervision {
    /// The tie of `stage`, connected on `conn` to the supervisor at `path`; `fds` are the pipeline's descriptors
    /// (the region's memfd first) to hand to a successor.
    pub fn new(stage: Stage, path: &Path, conn: Connection, fds: Vec<OwnedFd>, orphan_timeout: Duration) -> Self {
        let shared = Shared {
            told_to_stop: AtomicBool::new(false),
            orphaned_at: AtomicU64::new(0),
            given_up: AtomicBool::new(false),
            epoch: Instant::now(),
            _conn: Mutex::new(None),
        };
        Self {
            shared: Arc::new(shared),
            tie: Some((conn, Rejoin { stage, path: path.to_owned(), fds })),
            stage,
            orphan_timeout,
        }
    }

    /// Opens a stage's session (see [`Session::open`]) and ties it: the region, the descriptors the supervisor
    /// sent beyond it (the sockets), and the tie, which keeps copies of both for a successor. `orphan_timeout_s`
    /// is the stage's `--orphan-timeout-s` (below 0: 0; too large for a duration: without limit).
    pub fn open(
        path: &Path,
        stage: Stage,
        orphan_timeout_s: f64,
    ) -> Result<(Self, Region, Vec<OwnedFd>), SessionError> {
        let orphan_timeout = Duration::try_from_secs_f64(orphan_timeout_s.max(0.0)).unwrap_or(Duration::MAX);
        let Session { conn, region, fds } = Session::open(path, Role::Stage(stage), Access::ReadWrite)?;
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned().map_err(|e| SessionError::Control {
                path: path.display().to_string(),
                source: ControlError::Io { what: "keeping the pipeline's descriptors", source: e },
            })
        };
        let mut kept = vec![dup(region.fd())?];
        for fd in &fds {
            kept.push(dup(fd.as_fd())?);
        }
        Ok((Self::new(stage, path, conn, kept, orphan_timeout), region, fds))
    }

    /// Sends `msg` to the supervisor (the stage's Ready, before its loop starts).
    pub fn send(&self, msg: &Request) -> Result<(), ControlError> {
        match &self.tie {
            Some((c, _)) => c.send(msg),
            None => Err(ControlError::Closed),
        }
    }

    /// Whether the stage should stop now: the supervisor told it to, or the supervisor is gone, no successor came
    /// within the orphan timeout and the stage before it in the pipeline has exited (so this one drains all it
    /// will ever get). Called from the stage's loop, every few ms: two atomic loads, once its thread runs.
    pub fn should_stop(&mut self, region: &Region) -> bool {
        if let Some((conn, rejoin)) = self.tie.take() {
            self.start_thread(conn, rejoin);
        }
        if self.shared.told_to_stop.load(Ordering::Acquire) {
            return true;
        }
        if self.shared.given_up.load(Ordering::Acquire) {
            return self.upstream_gone(region);
        }
        let at = self.shared.orphaned_at.load(Ordering::Acquire);
        if at == 0 {
            return false;
        }
        let since = self.shared.epoch + Duration::from_millis(at - 1);
        if since.elapsed() < self.orphan_timeout {
            return false;
        }
        self.give_up(region);
        self.upstream_gone(region)
    }

    fn start_thread(&mut self, conn: Connection, rejoin: Rejoin) {
        let shared = self.shared.clone();
        let span = tracing::Span::current();
        let started = std::thread::Builder::new()
            .name("supervision".into())
            .spawn(move || span.in_scope(|| watch(&shared, conn, &rejoin)));
        if let Err(e) = started {
            // Without it the stage cannot hear its supervisor: it ends as if told to stop.
            tracing::error!(error = %e, "cannot start the thread that listens to the supervisor; stopping");
            self.shared.told_to_stop.store(true, Ordering::Release);
        }
    }

    /// No successor came: ends the running acquisition (`orphaned`: the first stage here claims the reason), and,
    /// in the assembler, lets go of external consumers' gates, which no supervisor advances any more (the
    /// assembler must drain into the frame ring).
    fn give_up(&mut self, region: &Region) {
        self.shared.given_up.store(true, Ordering::Release);
        let secs = self.orphan_timeout.as_secs_f64();
        tracing::error!(
            timeout_s = secs,
            "no supervisor took the pipeline over in {secs} s (orphan_timeout_s); finishing what the rings hold and exiting"
        );
        let Ok(area) = pipeline_area(region) else { return };
        if let Some(rec) = area.active() {
            if rec.state().takes_frames() {
                rec.claim_end(
                    EndReason::Orphaned,
                    &format!("the supervisor died and no successor took the pipeline over within {secs} s"),
                );
            }
            rec.stop_requested.store(1, Ordering::Release);
        }
        if self.stage == Stage::Assembler
            && let Ok(ring) = region.ring(FRAME_RING)
        {
            for i in subscriber_lines(&ring) {
                let _ = ring.release_consumer(i);
            }
        }
    }

    /// Whether the stage before this one has exited (the receiver has none): then this one has all its input.
    fn upstream_gone(&self, region: &Region) -> bool {
        let upstream = match self.stage {
            Stage::Receiver => return true,
            Stage::Assembler => Stage::Receiver,
            Stage::Writer => Stage::Assembler,
        };
        let Ok(area) = pipeline_area(region) else { return true };
        !process_alive(area.stage(upstream).pid.load(Ordering::Acquire))
    }
}

/// The thread that listens to the supervisor: waits on the connection (a command, or its end), and when the
/// supervisor is gone, rejoins a successor until one answers or the stage gives up.
fn watch(shared: &Shared, mut conn: Connection, rejoin: &Rejoin) {
    loop {
        match conn.poll_readable(Duration::from_secs(3600)).map(|ready| ready.then(|| conn.recv::<StageCommand>())) {
            Ok(None) => continue,
            Ok(Some(Ok(got))) => match got.msg {
                StageCommand::Shutdown { why } => {
                    tracing::info!(reason = ?why, "the supervisor told this stage to stop: {}", why.describe());
                    shared.told_to_stop.store(true, Ordering::Release);
                    // The connection stays open until the process exits: the supervisor sees the stage leave.
                    *shared._conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    return;
                }
            },
            Ok(Some(Err(ControlError::Closed))) | Err(ControlError::Closed) => {}
            Ok(Some(Err(e))) | Err(e) => {
                tracing::warn!(error = %e, "reading from the supervisor; taking it as gone");
            }
        }
        let lost = Instant::now();
        let at = lost.duration_since(shared.epoch).as_millis() as u64 + 1;
        shared.orphaned_at.store(at, Ordering::Release);
        tracing::warn!("the supervisor is gone; working on and waiting for a successor at {}", rejoin.path.display());
        let mut pause = REJOIN_FIRST_PAUSE;
        conn = loop {
            if shared.given_up.load(Ordering::Acquire) {
                return;
            }
            match rejoin_successor(rejoin) {
                Ok(c) => break c,
                Err(SessionError::Refused(why)) => {
                    // A successor runs and another process holds this stage: this one must not touch the rings
                    // again, not even to drain (two producers on a ring). It ends as a crash would, which every
                    // stage survives by design: the successor's process re-reads from the committed cursors.
                    tracing::error!("the new supervisor refused this process ({why}); exiting at once");
                    std::process::exit(REFUSED_EXIT);
                }
                Err(e) => tracing::trace!(error = %e, "no successor yet"),
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(REJOIN_MAX_PAUSE);
        };
        if shared.given_up.load(Ordering::Acquire) {
            return;
        }
        shared.orphaned_at.store(0, Ordering::Release);
        tracing::info!(after_ms = lost.elapsed().as_millis() as u64, "rejoined a new supervisor");
    }
}

/// Hands the pipeline's descriptors to a successor listening at the control path; its connection.
fn rejoin_successor(r: &Rejoin) -> Result<Connection, SessionError> {
    let ctl = |source| SessionError::Control { path: r.path.display().to_string(), source };
    let mut conn = Connection::connect(&r.path).map_err(ctl)?;
    conn.set_recv_timeout(Some(REJOIN_ANSWER)).map_err(ctl)?;
    let fds: Vec<BorrowedFd<'_>> = r.fds.iter().map(|f| f.as_fd()).collect();
    conn.send_with_fds(&Request::Rejoin { protocol: PROTOCOL_VERSION, stage: r.stage }, &fds).map_err(ctl)?;
    match conn.recv::<Reply>().map_err(ctl)?.msg {
        Reply::Welcome { .. } => {}
        Reply::Error { message } => return Err(SessionError::Refused(message)),
        other => return Err(SessionError::Protocol(format!("{other:?}"))),
    }
    conn.set_recv_timeout(None).map_err(ctl)?;
    Ok(conn)
}

/// Whether process `pid` exists and has not ended (a zombie has); false for 0.
pub fn process_alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
            .is_some_and(|state| state != 'Z' && state != 'X')
}
