//! Helpers for ringdaq's multi-process tests: unique runtime directories and child processes that are killed
//! and reaped whatever happens to the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod fuzz;
pub mod peer;
pub mod pipeline;

/// A fresh directory under the system temp dir, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/ringdaq-<tag>-<pid>-<n>` with mode 0700.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ringdaq-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is SIGKILLed and reaped when dropped (a failing test leaves no process behind).
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Spawns `cmd` as the leader of a process group of its own: the processes it starts (a supervisor's
    /// stages, which outlive it) are in it too, and [`ChildGuard::kill`] ends them all.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        Ok(Self(Some(cmd.process_group(0).spawn()?)))
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGKILL to the child and every process of its group, and reaps the child.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            kill_group(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGKILL to the child only (as a crash of it alone), and reaps it; the rest of its group lives on
    /// (end it with [`kill_group`]).
    pub fn kill_alone(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal without reaping.
    pub fn signal(&self, sig: rustix::process::Signal) {
        if let Some(c) = &self.0
            && let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32)
        {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::io::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(c) = self.0.as_mut() else {
                return Ok(None);
            };
            if let Some(st) = c.try_wait()? {
                self.0 = None;
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Sends SIGKILL to every process of process group `pgid` (a [`ChildGuard`]'s child's pid), if any is left.
pub fn kill_group(pgid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small deterministic generator (xorshift64*) for test schedules; seeds are printed so failures replay.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced by a constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// A seed from the clock, or from `RINGDAQ_TEST_SEED` when set.
    pub fn seed_from_env() -> u64 {
        std::env::var("RINGDAQ_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        })
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// Processes whose command line mentions `needle` (the stages carry their control socket's path).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Polls `f` every few milliseconds until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Path of a binary of this workspace, built next to the test executables (`target/<profile>/NAME`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("test executable lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built; run the tests with `cargo test --workspace`", p.display());
    p
}

/// Binds `n` UDP sockets on 127.0.0.1 at consecutive ports and returns the first port and the sockets.
/// Tries random bases so that tests running in parallel do not collide.
pub fn bind_consecutive_udp(n: u16) -> std::io::Result<(u16, Vec<std::net::UdpSocket>)> {
    let mut rng = XorShift::new(XorShift::seed_from_env() ^ u64::from(std::process::id()));
    for _ in 0..200 {
        let base = rng.range(20_000, 60_000) as u16;
        let socks: Result<Vec<_>, _> = (0..n).map(|i| std::net::UdpSocket::bind(("127.0.0.1", base + i))).collect();
        if let Ok(s) = socks {
            return Ok((base, s));
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free range of UDP ports"))
}

/// A base port with `n` consecutive free UDP ports on 127.0.0.1 (released again; a process binds them next).
pub fn free_udp_port_base(n: u16) -> u16 {
    bind_consecutive_udp(n).expect("free UDP ports").0
}

/// `ringdaq --runtime-dir RT run --port-base (free ports) --config CFG`, its standard error into a new file `log`
/// and its standard output discarded: add arguments or environment, then spawn it (a [`ChildGuard`]).
pub fn ringdaq_run(rt: &Path, cfg: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(bin_path("ringdaq"));
    cmd.arg("--runtime-dir")
        .arg(rt)
        .args(["run", "--port-base", &free_udp_port_base(8).to_string(), "--config"])
        .arg(cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(std::fs::File::create(log).expect("log file")));
    cmd
}

/// Raises a socket's receive buffer, past `rmem_max` where the process may (root: `SO_RCVBUFFORCE`).
pub fn grow_recv_buffer(sock: &impl std::os::fd::AsFd, bytes: usize) {
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(sock, bytes).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(sock, bytes);
    }
}

/// Serializes the tests of one test binary that run real pipelines: they share the machine's cores, and a test
/// that measures nothing still needs its stream delivered in time. (Test binaries themselves run one at a time.)
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}
/// A small tmpfs mounted for the test, unmounted (lazily, whatever happens) when dropped.
pub struct SmallFs(PathBuf);

impl SmallFs {
    /// Mounts a `size`-byte tmpfs at `dir`, or says why it cannot.
    pub fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "ringdaq-test"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Self(dir.to_owned()))
    }

    /// [`SmallFs::mount`], or None after saying on stderr that the test is skipped (mounting needs root).
    pub fn mount_or_skip(dir: &Path, size: &str) -> Option<Self> {
        Self::mount(dir, size)
            .map_err(|why| eprintln!("skipped: cannot mount a small tmpfs here ({why}); needs root"))
            .ok()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        // A lazily unmounted file system lives on while a process still uses it (a stage dying with the
        // supervisor); its mount point cannot be removed until then.
        let _ = wait_for(Duration::from_secs(5), || std::fs::remove_dir(&self.0).ok());
    }
}

/// Fills the file system at `dir` until it is full.
pub fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).expect("filler");
    let chunk = vec![0xEEu8; 1 << 16];
    while f.write_all(&chunk).is_ok() {}
    // The last partial page, byte by byte.
    while f.write_all(&[0]).is_ok() {}
}
