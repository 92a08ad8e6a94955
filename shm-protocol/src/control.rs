//! The control channel: typed messages over a Unix `SOCK_SEQPACKET` socket.
//!
//! Each message is one `serde` value encoded with `postcard` in one packet (the socket keeps the boundaries, so
//! no length prefix is needed), with any file descriptors attached as `SCM_RIGHTS`. A packet over
//! [`MAX_MESSAGE`] bytes, with more than [`MAX_FDS`] descriptors, or that fails to decode is an error, never a
//! panic. The peer's credentials are read from the kernel (`SO_PEERCRED`) and checked on accept.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType, sockopt,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest encoded message accepted, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Most file descriptors accepted with one message.
pub const MAX_FDS: usize = 16;

/// Why a control-channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// An OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent a packet larger than [`MAX_MESSAGE`].
    #[error("message of {size} bytes exceeds the limit of {MAX_MESSAGE}")]
    TooLarge {
        /// Size of the packet as the kernel reported it.
        size: usize,
    },
    /// The peer sent more descriptors than [`MAX_FDS`] (the surplus was closed by the kernel).
    #[error("too many file descriptors with one message (limit {MAX_FDS})")]
    TooManyFds,
    /// The packet is not a valid encoding of the expected type.
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    /// The message to send does not fit in [`MAX_MESSAGE`].
    #[error("message to send is {size} bytes, over the limit of {MAX_MESSAGE}")]
    SendTooLarge {
        /// Encoded size.
        size: usize,
    },
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// Nothing arrived within the timeout.
    #[error("timed out")]
    Timeout,
    /// The peer runs as another user.
    #[error("peer uid {uid} (pid {pid}) refused: only uid {allowed} or root may connect")]
    PeerRefused {
        /// Peer's uid.
        uid: u32,
        /// Peer's pid.
        pid: i32,
        /// The uid allowed.
        allowed: u32,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(Errno) -> ControlError {
    move |e| ControlError::Io { what, source: e.into() }
}

/// Credentials of the process at the other end, as the kernel recorded them at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// A bound, listening control socket.
#[derive(Debug)]
pub struct ControlListener {
    fd: OwnedFd,
    path: PathBuf,
}

impl ControlListener {
    /// Binds a `SOCK_SEQPACKET` socket at `path` with mode 0600 and listens.
    ///
    /// A stale socket file left by a dead process is replaced; one that still answers is an error (another
    /// instance runs there).
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        if path.exists() {
            match Connection::connect(path) {
                Ok(_) => {
                    return Err(ControlError::Io {
                        what: "binding the control socket",
                        source: std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("{} is in use by a running process", path.display()),
                        ),
                    });
                }
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
            .map_err(io_err("creating the control socket"))?;
        let addr = SocketAddrUnix::new(path).map_err(io_err("control socket path"))?;
        rustix::net::bind(&fd, &addr).map_err(io_err("binding the control socket"))?;
        // Restrict before listening: nobody can connect to a socket that does not listen yet.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| ControlError::Io { what: "chmod of the control socket", source })?;
        rustix::net::listen(&fd, 64).map_err(io_err("listening on the control socket"))?;
        Ok(Self { fd, path: path.to_owned() })
    }

    /// Where the socket is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection and checks that the peer runs as our user (or root).
    ///
    /// A refused peer's connection is closed and [`ControlError::PeerRefused`] returned; the listener is intact.
    /// (A server that wants to tell the peer why uses [`ControlListener::accept_any`] and
    /// [`Connection::refuse`].)
    pub fn accept(&self) -> Result<Connection, ControlError> {
        let conn = self.accept_any()?;
        conn.check_peer()?;
        Ok(conn)
    }

    /// Accepts one connection without checking who the peer is; check with [`Connection::check_peer`].
    pub fn accept_any(&self) -> Result<Connection, ControlError> {
        let fd = rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC).map_err(io_err("accept"))?;
        Connection::from_fd(fd)
    }

    /// Waits up to `timeout` for a connection to be ready to accept; `Ok(false)` on timeout.
    pub fn poll_accept(&self, timeout: Duration) -> Result<bool, ControlError> {
        poll_readable(self.fd.as_fd(), timeout)
    }
}

impl AsFd for ControlListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool, ControlError> {
    let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(io_err("poll")(e)),
    }
}

/// A message received with the descriptors that came with it.
#[derive(Debug)]
pub struct Received<T> {
    /// The decoded message.
    pub msg: T,
    /// Descriptors attached to it, in the order sent.
    pub fds: Vec<OwnedFd>,
}

/// One end of a control connection.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
    peer: PeerCredentials,
    buf: Vec<u8>,
}

impl Connection {
    fn from_fd(fd: OwnedFd) -> Result<Self, ControlError> {
        let cred = sockopt::socket_peercred(&fd).map_err(io_err("reading peer credentials"))?;
        let peer =
            PeerCredentials { pid: cred.pid.as_raw_nonzero().get(), uid: cred.uid.as_raw(), gid: cred.gid.as_raw() };
        Ok(Self { fd, peer, buf: vec![0; MAX_MESSAGE + 1] })
    }

    /// Connects to a listener at `path`.
    pub fn connect(path: &Path) -> Result<Self, ControlError> {
        let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
            .map_err(io_err("creating a control socket"))?;
        let addr = SocketAddrUnix::new(path).map_err(io_err("control socket path"))?;
        rustix::net::connect(&fd, &addr).map_err(io_err("connecting to the control socket"))?;
        Self::from_fd(fd)
    }

    /// A connected pair (for a parent and the child it spawns, or tests).
    pub fn pair() -> Result<(Self, Self), ControlError> {
        let (a, b) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
            .map_err(io_err("socketpair"))?;
        Ok((Self::from_fd(a)?, Self::from_fd(b)?))
    }

    /// Wraps an inherited, connected `SOCK_SEQPACKET` descriptor.
    pub fn from_inherited(fd: OwnedFd) -> Result<Self, ControlError> {
        Self::from_fd(fd)
    }

    /// The peer's credentials.
    pub fn peer(&self) -> PeerCredentials {
        self.peer
    }

    /// Whether the peer runs as our user or as root (the only peers a ringdaq process serves).
    pub fn check_peer(&self) -> Result<(), ControlError> {
        let me = rustix::process::geteuid().as_raw();
        if self.peer.uid != me && self.peer.uid != 0 {
            return Err(ControlError::PeerRefused { uid: self.peer.uid, pid: self.peer.pid, allowed: me });
        }
        Ok(())
    }

    /// Answers a peer that is refused (by [`Connection::check_peer`], say) with `reply`, then closes: waits up
    /// to a second for its first message (so that the answer is not lost in a connection closed under its
    /// send), discards it and any descriptors with it, whatever it is, and sends `reply`. The transport does not
    /// know the protocol's messages: the caller says what a refusal looks like.
    pub fn refuse<T: Serialize>(mut self, reply: &T) {
        let _ = self.set_recv_timeout(Some(Duration::from_secs(1)));
        // `recv` takes the packet and its descriptors before decoding; whether `()` decodes from it is moot.
        let _ = self.recv::<()>();
        let _ = self.send(reply);
    }

    /// Sets how long [`Connection::recv`] waits (`None`: forever).
    pub fn set_recv_timeout(&self, timeout: Option<Duration>) -> Result<(), ControlError> {
        sockopt::set_socket_timeout(&self.fd, sockopt::Timeout::Recv, timeout).map_err(io_err("SO_RCVTIMEO"))
    }

    /// Sends `msg` with no descriptors.
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<(), ControlError> {
        self.send_with_fds(msg, &[])
    }

    /// Sends `msg` with `fds` attached (`SCM_RIGHTS`).
    pub fn send_with_fds<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ControlError> {
        let bytes = postcard::to_stdvec(msg)?;
        if bytes.len() > MAX_MESSAGE {
            return Err(ControlError::SendTooLarge { size: bytes.len() });
        }
        if fds.len() > MAX_FDS {
            return Err(ControlError::TooManyFds);
        }
        self.send_raw(&bytes, fds)
    }

    /// Sends raw bytes as one packet (tests use it to send malformed messages).
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ControlError> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(ControlError::TooManyFds);
        }
        loop {
            match rustix::net::sendmsg(&self.fd, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(Errno::PIPE) | Err(Errno::CONNRESET) => return Err(ControlError::Closed),
                Err(Errno::MSGSIZE) => {
                    return Err(ControlError::SendTooLarge { size: bytes.len() });
                }
                Err(e) => return Err(io_err("sending a control message")(e)),
            }
        }
    }

    /// Receives one message, waiting as set by [`Connection::set_recv_timeout`].
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Received<T>, ControlError> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = loop {
            let mut iov = [IoSliceMut::new(&mut self.buf)];
            match rustix::net::recvmsg(&self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC) {
                Ok(r) => break r,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Err(ControlError::Timeout),
                Err(Errno::CONNRESET) => return Err(ControlError::Closed),
                Err(e) => return Err(io_err("receiving a control message")(e)),
            }
        };
        // Take ownership of every descriptor first, so that they are closed whatever happens next.
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
        if r.bytes == 0 && !r.flags.contains(ReturnFlags::TRUNC) {
            return Err(ControlError::Closed);
        }
        if r.bytes > MAX_MESSAGE || r.flags.contains(ReturnFlags::TRUNC) {
            return Err(ControlError::TooLarge { size: r.bytes });
        }
        if r.flags.contains(ReturnFlags::CTRUNC) {
            return Err(ControlError::TooManyFds);
        }
        let msg = postcard::from_bytes(&self.buf[..r.bytes])?;
        Ok(Received { msg, fds })
    }

    /// Sends `request` and waits for one reply.
    pub fn call<Q: Serialize, A: DeserializeOwned>(&mut self, request: &Q) -> Result<Received<A>, ControlError> {
        self.send(request)?;
        self.recv()
    }

    /// Ends the connection in both directions now (the peer reads end-of-file), while this process keeps the
    /// descriptor and whatever it received over it.
    pub fn shutdown(&self) {
        // Only fails for a socket that is not connected any more: then it is ended already.
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Both);
    }

    /// Waits up to `timeout` for a message to be ready; `Ok(false)` on timeout.
    pub fn poll_readable(&self, timeout: Duration) -> Result<bool, ControlError> {
        poll_readable(self.fd.as_fd(), timeout)
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    enum Msg {
        Ping(u32),
        Blob(Vec<u8>),
    }

    #[test]
    fn round_trip_with_fds() {
        let (a, mut b) = Connection::pair().unwrap();
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        a.send_with_fds(&Msg::Ping(7), &[f.as_fd()]).unwrap();
        let r: Received<Msg> = b.recv().unwrap();
        assert_eq!(r.msg, Msg::Ping(7));
        assert_eq!(r.fds.len(), 1);
        assert_eq!(b.peer().pid, std::process::id() as i32);
    }

    #[test]
    fn oversized_message_is_rejected_and_connection_survives() {
        let (a, mut b) = Connection::pair().unwrap();
        assert!(matches!(a.send(&Msg::Blob(vec![0; MAX_MESSAGE + 10])), Err(ControlError::SendTooLarge { .. })));
        a.send_raw(&vec![0u8; MAX_MESSAGE + 100], &[]).unwrap();
        let e = b.recv::<Msg>().unwrap_err();
        assert!(matches!(e, ControlError::TooLarge { size } if size == MAX_MESSAGE + 100), "{e}");
        a.send(&Msg::Ping(1)).unwrap();
        assert_eq!(b.recv::<Msg>().unwrap().msg, Msg::Ping(1));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let (a, mut b) = Connection::pair().unwrap();
        a.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], &[]).unwrap();
        assert!(matches!(b.recv::<Msg>(), Err(ControlError::Decode(_))));
        a.send_raw(&[1], &[]).unwrap(); // Blob with its length missing: truncated
        assert!(matches!(b.recv::<Msg>(), Err(ControlError::Decode(_))));
    }

    #[test]
    fn closed_and_timeout() {
        let (a, mut b) = Connection::pair().unwrap();
        b.set_recv_timeout(Some(Duration::from_millis(20))).unwrap();
        assert!(matches!(b.recv::<Msg>(), Err(ControlError::Timeout)));
        drop(a);
        assert!(matches!(b.recv::<Msg>(), Err(ControlError::Closed)));
    }

    #[test]
    fn listener_accepts_same_user_and_removes_its_file() {
        let dir = std::env::temp_dir().join(format!("ringdaq-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        {
            let l = ControlListener::bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let c = Connection::connect(&path).unwrap();
            let mut s = l.accept().unwrap();
            c.send(&Msg::Ping(3)).unwrap();
            assert_eq!(s.recv::<Msg>().unwrap().msg, Msg::Ping(3));
            assert!(ControlListener::bind(&path).is_err(), "a live socket must not be stolen");
        }
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
