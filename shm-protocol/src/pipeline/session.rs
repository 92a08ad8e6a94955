//! A stage's (or consumer's) session with the supervisor: hello, welcome with the region's memfd, commands.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use crate::control::{Connection, ControlError};
use crate::pipeline::messages::{PROTOCOL_VERSION, Reply, Request, Role, StageCommand};
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

pub use crate::pipeline::supervision::{DEFAULT_ORPHAN_TIMEOUT, REFUSED_EXIT, Supervision, process_alive};
