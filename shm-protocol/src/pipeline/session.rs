//! A stage's (or consumer's) session with the supervisor: hello, welcome with the region's memfd, commands.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::control::{Connection, ControlError};
use crate::layout::ConsumerMode;
use crate::pipeline::messages::{PROTOCOL_VERSION, Reply, Request, Role, StageCommand};
use crate::pipeline::{EndReason, FRAME_RING, Stage, WRITER_CURSOR, pipeline_area};
use crate::region::{Access, Region, RegionError};

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Talking to the supervisor failed.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket.
        path: String,
        /// What failed.
        #[source]
        source: ControlError,
    },
    /// The supervisor refused us.
    #[error("supervisor refused the connection: {0}")]
    Refused(String),
    /// The supervisor answered something unexpected.
    #[error("unexpected reply from the supervisor: {0}")]
    Protocol(String),
    /// The supervisor sent no region fd.
    #[error("the supervisor sent no region memfd")]
    NoRegion,
    /// The region could not be attached.
    #[error(transparent)]
    Region(#[from] RegionError),
}

/// An open session: the connection, the attached region, and any other fds the supervisor handed over.
#[derive(Debug)]
pub struct Session {
    /// The control connection (kept open: its closing tells either side the other is gone).
    pub conn: Connection,
    /// The region.
    pub region: Region,
    /// Further descriptors sent with the welcome (the receiver's UDP sockets), in order.
    pub fds: Vec<OwnedFd>,
}

impl Session {
    /// Connects to the supervisor's control socket at `path` as `role` and attaches the region.
    pub fn open(path: &Path, role: Role, access: Access) -> Result<Self, SessionError> {
        let ctl = |source| SessionError::Control { path: path.display().to_string(), source };
        let mut conn = Connection::connect(path).map_err(ctl)?;
        conn.set_recv_timeout(Some(Duration::from_secs(10))).map_err(ctl)?;
        conn.send(&Request::Hello { protocol: PROTOCOL_VERSION, role }).map_err(ctl)?;
        let got = conn.recv::<Reply>().map_err(ctl)?;
        match got.msg {
            Reply::Welcome { .. } => {}
            Reply::Error { message } => return Err(SessionError::Refused(message)),
            other => return Err(SessionError::Protocol(format!("{other:?}"))),
        }
        let mut fds = got.fds.into_iter();
        let region = Region::attach(fds.next().ok_or(SessionError::NoRegion)?, access)?;
        conn.set_recv_timeout(None).map_err(ctl)?;
        Ok(Self { conn, region, fds: fds.collect() })
    }

    /// A command from the supervisor, if one is waiting; see [`poll_command`].
    pub fn poll_command(&mut self) -> Result<Option<StageCommand>, ControlError> {
        poll_command(&mut self.conn)
    }
}

/// A command from the supervisor on a stage's connection, if one is waiting, without blocking.
/// `Err(ControlError::Closed)` means the supervisor is gone, and the stage should exit.
pub fn poll_command(conn: &mut Connection) -> Result<Option<StageCommand>, ControlError> {
    if !conn.poll_readable(Duration::ZERO)? {
        return Ok(None);
    }
    Ok(Some(conn.recv::<StageCommand>()?.msg))
}

/// Whether a stage should stop now: a Shutdown command arrived or the supervisor is gone. Either is logged
/// with who told the stage and why, so that its `stopped` line that follows has a cause.
pub fn should_stop(conn: &mut Connection) -> bool {
    match poll_command(conn) {
        Ok(Some(StageCommand::Shutdown { why })) => {
            tracing::info!(reason = ?why, "the supervisor told this stage to stop: {}", why.describe());
            true
        }
        Err(ControlError::Closed) => {
            tracing::warn!(
                "the supervisor closed this stage's connection (it exited, or the stage is not this process's); \
                 stopping"
            );
            true
        }
        Ok(None) | Err(_) => false,
    }
}

/// How long a stage whose supervisor died waits for a successor before it ends the pipeline on its own
/// (`supervisor.orphan_timeout_s`): a `systemd` restart (`RestartSec=2`) or a user typing `ringdaq run` again
/// fits in it, and an abandoned pipeline does not run unsupervised for long.
pub const DEFAULT_ORPHAN_TIMEOUT: Duration = Duration::from_secs(30);

/// First pause between a stage's attempts to reach a successor; it doubles up to [`REJOIN_MAX_PAUSE`].
const REJOIN_FIRST_PAUSE: Duration = Duration::from_millis(2);

/// Longest pause between a stage's attempts to reach a successor: a new supervisor finds its stages within 20 ms
/// of binding the control socket (adoption aims at 100 ms), and a stage that waits tries 50 times a second at
/// most, one failing `connect` each.
const REJOIN_MAX_PAUSE: Duration = Duration::from_millis(20);

/// How long a rejoining stage waits for the successor's answer. The successor answers once it has the region
/// (a few ms); the stage's loop does not run meanwhile, and the kernel's socket buffers hold what arrives.
const REJOIN_ANSWER: Duration = Duration::from_secs(1);

/// Exit status of a stage that a successor refused (it is not the stage's process any more).
pub const REFUSED_EXIT: i32 = 75;

/// Where a stage stands with its supervisor.
#[derive(Debug)]
enum Link {
    /// Connected: commands come on this connection.
    Connected(Connection),
    /// The supervisor is gone since `since`; the next attempt to rejoin a successor is at `next_try`.
    Orphaned {
        /// When the connection closed.
        since: Instant,
        /// When to try again.
        next_try: Instant,
        /// The pause after the next failed attempt.
        pause: Duration,
    },
    /// No successor came within the orphan timeout: the stage finishes what it holds and exits.
    GivingUp,
}

/// A running stage's tie to its supervisor, surviving the supervisor: commands while it lives; when it dies,
/// the stage keeps moving data and rejoins a successor on the same control socket path, handing it back the
/// pipeline's descriptors (the region's memfd and the detector's sockets, which every stage holds so that any one
/// survivor can); after the orphan timeout without one, [`Supervision::should_stop`] ends the running acquisition
/// (`orphaned`) and stops the stages in pipeline order.
#[derive(Debug)]
pub struct Supervision {
    stage: Stage,
    path: PathBuf,
    link: Link,
    /// The region's memfd, then the detector's sockets: what a successor takes back.
    fds: Vec<OwnedFd>,
    orphan_timeout: Duration,
}

impl Supervision {
    /// The tie of `stage`, connected on `conn` to the supervisor at `path`; `fds` are the pipeline's descriptors
    /// (the region's memfd first) to hand to a successor.
    pub fn new(stage: Stage, path: &Path, conn: Connection, fds: Vec<OwnedFd>, orphan_timeout: Duration) -> Self {
        Self { stage, path: path.to_owned(), link: Link::Connected(conn), fds, orphan_timeout }
    }

    /// Opens a stage's session (see [`Session::open`]) and ties it: the region, the descriptors the supervisor
    /// sent beyond it (the sockets), and the tie, which keeps copies of both for a successor.
    pub fn open(
        path: &Path,
        stage: Stage,
        orphan_timeout: Duration,
    ) -> Result<(Self, Region, Vec<OwnedFd>), SessionError> {
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

    /// Sends `msg` to the supervisor, if one is connected.
    pub fn send(&self, msg: &Request) -> Result<(), ControlError> {
        match &self.link {
            Link::Connected(c) => c.send(msg),
            _ => Err(ControlError::Closed),
        }
    }

    /// Whether the stage should stop now: the supervisor told it to, or the supervisor is gone and no successor
    /// came within the orphan timeout and the stage before it in the pipeline has exited (so this one drains all
    /// it will ever get). Called from the stage's loop, every few ms; while orphaned it tries a successor at most
    /// every [`REJOIN_MAX_PAUSE`].
    pub fn should_stop(&mut self, region: &Region) -> bool {
        match &mut self.link {
            Link::Connected(conn) => match poll_command(conn) {
                Ok(Some(StageCommand::Shutdown { why })) => {
                    tracing::info!(reason = ?why, "the supervisor told this stage to stop: {}", why.describe());
                    true
                }
                Err(ControlError::Closed) => {
                    tracing::warn!(
                        timeout_s = self.orphan_timeout.as_secs_f64(),
                        "the supervisor is gone; working on and waiting for a successor at {}",
                        self.path.display()
                    );
                    let now = Instant::now();
                    self.link = Link::Orphaned { since: now, next_try: now, pause: REJOIN_FIRST_PAUSE };
                    false
                }
                Ok(None) | Err(_) => false,
            },
            &mut Link::Orphaned { since, next_try, pause } => {
                let now = Instant::now();
                if now >= next_try {
                    match self.rejoin() {
                        Ok(conn) => {
                            tracing::info!("rejoined a new supervisor");
                            self.link = Link::Connected(conn);
                            return false;
                        }
                        Err(SessionError::Refused(why)) => {
                            // A successor runs and another process holds this stage: this one must not touch the
                            // rings again, not even to drain (two producers on a ring). It ends as a crash would,
                            // which every stage survives by design: the successor's process re-reads from the
                            // committed cursors.
                            tracing::error!("the new supervisor refused this process ({why}); exiting at once");
                            std::process::exit(REFUSED_EXIT);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "no successor yet");
                            let next = (pause * 2).min(REJOIN_MAX_PAUSE);
                            self.link = Link::Orphaned { since, next_try: now + pause, pause: next };
                        }
                    }
                }
                if since.elapsed() < self.orphan_timeout {
                    return false;
                }
                self.give_up(region);
                self.upstream_gone(region)
            }
            Link::GivingUp => self.upstream_gone(region),
        }
    }

    /// Hands the pipeline's descriptors to a successor listening at the control path; its connection.
    fn rejoin(&self) -> Result<Connection, SessionError> {
        let ctl = |source| SessionError::Control { path: self.path.display().to_string(), source };
        let mut conn = Connection::connect(&self.path).map_err(ctl)?;
        conn.set_recv_timeout(Some(REJOIN_ANSWER)).map_err(ctl)?;
        let fds: Vec<BorrowedFd<'_>> = self.fds.iter().map(|f| f.as_fd()).collect();
        conn.send_with_fds(&Request::Rejoin { protocol: PROTOCOL_VERSION, stage: self.stage }, &fds).map_err(ctl)?;
        match conn.recv::<Reply>().map_err(ctl)?.msg {
            Reply::Welcome { .. } => {}
            Reply::Error { message } => return Err(SessionError::Refused(message)),
            other => return Err(SessionError::Protocol(format!("{other:?}"))),
        }
        conn.set_recv_timeout(None).map_err(ctl)?;
        Ok(conn)
    }

    /// No successor came: ends the running acquisition (`orphaned`: the first stage here claims the reason), and,
    /// in the assembler, lets go of external consumers' gates, which no supervisor advances any more (the
    /// assembler must drain into the frame ring).
    fn give_up(&mut self, region: &Region) {
        self.link = Link::GivingUp;
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
            for i in (0..ring.max_consumers()).filter(|&i| i != WRITER_CURSOR) {
                if ring.consumer_state(i).is_ok_and(|(_, mode, _)| mode != ConsumerMode::Free) {
                    let _ = ring.set_wake_always(i, false);
                    let _ = ring.release_consumer(i);
                }
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

/// Whether process `pid` exists and has not ended (a zombie has); false for 0.
pub fn process_alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
            .is_some_and(|state| state != 'Z' && state != 'X')
}
