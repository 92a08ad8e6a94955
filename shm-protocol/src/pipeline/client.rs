//! A client of the supervisor's control socket: where it is (the runtime directory the `ringdaq` command uses
//! without `--runtime-dir`) and a connection past the hello. The one the CLI and the Python package use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control::{Connection, ControlError, Received};
use crate::pipeline::messages::{PROTOCOL_VERSION, Reply, Request, Role};

/// `flag` (`--runtime-dir`), else `$RINGDAQ_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/ringdaq`, else
/// `/tmp/ringdaq-<uid>`.
pub fn resolve_runtime_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("RINGDAQ_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("ringdaq");
    }
    PathBuf::from(format!("/tmp/ringdaq-{}", rustix::process::getuid().as_raw()))
}

/// The control socket inside a runtime directory.
pub fn control_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("control.sock")
}

/// Why a client could not talk to the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No control socket: no pipeline runs there.
    #[error("no ringdaq is running with runtime directory {} (no {})", dir.display(), sock.display())]
    NotRunning {
        /// The runtime directory.
        dir: PathBuf,
        /// Its control socket.
        sock: PathBuf,
    },
    /// The socket exists but cannot be looked at.
    #[error("cannot reach {}: {error} (a runtime directory of another user?)", sock.display())]
    Unreachable {
        /// The control socket.
        sock: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// Connecting failed.
    #[error("connecting to {}", sock.display())]
    Connect {
        /// The control socket.
        sock: PathBuf,
        /// Why.
        #[source]
        source: ControlError,
    },
    /// A request or its reply failed on the connection.
    #[error("talking to the supervisor")]
    Talk(#[source] ControlError),
    /// The supervisor answered with an error: its message.
    #[error("{0}")]
    Refused(String),
    /// The hello got another answer than a welcome.
    #[error("unexpected answer to hello: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// Whether the connection failed (a supervisor that died, or none listening), rather than the supervisor
    /// answering: a successor may answer on a new connection.
    pub fn is_broken(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Talk(_))
    }
}

/// A client connection to the supervisor in `runtime_dir`, past the hello (replies within 10 s).
pub fn connect(runtime_dir: &Path) -> Result<Connection, ClientError> {
    let sock = control_socket(runtime_dir);
    match std::fs::symlink_metadata(&sock) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClientError::NotRunning { dir: runtime_dir.to_owned(), sock });
        }
        Err(error) => return Err(ClientError::Unreachable { sock, error }),
    }
    let connected =
        Connection::connect(&sock).and_then(|c| c.set_recv_timeout(Some(Duration::from_secs(10))).map(|()| c));
    let mut conn = connected.map_err(|source| ClientError::Connect { sock, source })?;
    match call(&mut conn, &Request::Hello { protocol: PROTOCOL_VERSION, role: Role::Client })?.msg {
        Reply::Welcome { .. } => Ok(conn),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// Sends a request and returns the reply; an `Error` reply is [`ClientError::Refused`].
pub fn call(conn: &mut Connection, req: &Request) -> Result<Received<Reply>, ClientError> {
    let r = conn.call::<_, Reply>(req).map_err(ClientError::Talk)?;
    match r.msg {
        Reply::Error { message } => Err(ClientError::Refused(message)),
        _ => Ok(r),
    }
}
