//! A stage's (or consumer's) session with the supervisor: hello, welcome with the region's memfd, commands.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use crate::control::{Connection, ControlError};
use crate::pipeline::messages::{PROTOCOL_VERSION, Reply, Request, Role};
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
}

pub use crate::pipeline::supervision::{DEFAULT_ORPHAN_TIMEOUT, REFUSED_EXIT, Supervision, process_alive};
