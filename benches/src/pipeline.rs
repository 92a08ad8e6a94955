//! `ringdaq run` as a user starts it, in a runtime directory of its own, for the benchmarks that need the whole
//! pipeline. Its processes (the supervisor and the stages, which outlive a supervisor killed alone) are killed and
//! the directory removed when the [`Pipeline`] is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use shm_protocol::control::Connection;
use shm_protocol::messages::{Reply, Request, StatusReport};

/// A running `ringdaq run` (no simulator: the benchmark sends).
pub struct Pipeline {
    child: Child,
    /// Process groups of supervisors killed alone ([`Pipeline::replace_supervisor`]): their stages live on.
    earlier_groups: Vec<u32>,
    /// Its directory (runtime dir `rt/`, configuration, log).
    pub dir: PathBuf,
    /// First of its eight UDP ports on 127.0.0.1.
    pub port_base: u16,
    conn: Connection,
}

impl Pipeline {
    /// Starts `ringdaq` (found next to the running benchmark binary) with `config` (TOML) and waits until every
    /// stage runs. `tag` names the directory.
    pub fn start(tag: &str, config: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ringdaq-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("ringdaq.toml");
        std::fs::write(&cfg, config)?;
        // Free now; released for `ringdaq run` to bind.
        let (port_base, _) = bind_eight_udp()?;
        let mut cmd = supervisor_command(&dir, port_base)?;
        let child = cmd.spawn().context("running ringdaq (build it first: cargo build --release)")?;
        let mut child = child;
        let t = Instant::now();
        let conn = loop {
            match supervisor::client::connect(&dir.join("rt")) {
                Ok(c) => break c,
                Err(e) => {
                    // A configuration ringdaq refuses ends it at once: say what it said.
                    let exited = child.try_wait().ok().flatten();
                    if exited.is_some() || t.elapsed() > Duration::from_secs(20) {
                        let _ = child.kill();
                        let _ = child.wait();
                        let log = std::fs::read_to_string(dir.join("ringdaq.log")).unwrap_or_default();
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e.context(format!("ringdaq run did not start:\n{}", log.trim_end())));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let mut p = Self { child, earlier_groups: Vec::new(), dir, port_base, conn };
        let t = Instant::now();
        while !p.status()?.stages.iter().all(|s| s.state == "running") {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(20), "stages did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(p)
    }

    /// SIGKILLs the supervisor alone and starts `ringdaq run` again in the same runtime directory, which adopts
    /// the running stages; returns the time from the kill until the new supervisor answers with every stage
    /// running, and checks they are the same processes.
    pub fn replace_supervisor(&mut self) -> anyhow::Result<Duration> {
        let before = self.pids()?;
        let t = Instant::now();
        self.earlier_groups.push(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = supervisor_command(&self.dir, self.port_base)?.spawn().context("running ringdaq again")?;
        loop {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(20), "the pipeline was not adopted within 20 s");
            let Ok(mut conn) = supervisor::client::connect(&self.runtime_dir()) else {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            };
            if let Ok(Reply::Status(s)) = supervisor::client::call(&mut conn, Request::Status)
                && s.stages.iter().all(|st| st.state == "running")
            {
                let took = t.elapsed();
                self.conn = conn;
                let after = self.pids()?;
                anyhow::ensure!(
                    before[1..] == after[1..],
                    "the stages were replaced, not adopted: {before:?} {after:?}"
                );
                return Ok(took);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// The runtime directory (for clients).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join("rt")
    }

    /// The supervisor's status.
    pub fn status(&mut self) -> anyhow::Result<StatusReport> {
        match supervisor::client::call(&mut self.conn, Request::Status)? {
            Reply::Status(s) => Ok(*s),
            other => anyhow::bail!("unexpected reply {other:?}"),
        }
    }

    /// Sends a request and returns the reply.
    pub fn call(&mut self, req: Request) -> anyhow::Result<Reply> {
        supervisor::client::call(&mut self.conn, req)
    }

    /// Pid of `stage` (0 if none runs) and whether it runs.
    pub fn pid(&mut self, stage: &str) -> anyhow::Result<(u32, bool)> {
        let s = self.status()?;
        let st = s.stages.iter().find(|s| s.name == stage).context("stage")?;
        Ok((st.pid, st.state == "running"))
    }

    /// Pids of the supervisor and the three stages.
    pub fn pids(&mut self) -> anyhow::Result<Vec<(String, u32)>> {
        let s = self.status()?;
        let mut v = vec![("supervisor".to_string(), s.pid)];
        v.extend(s.stages.iter().map(|st| (st.name.clone(), st.pid)));
        Ok(v)
    }

    /// Counter `name` of a status report (0 if absent).
    pub fn counter(s: &StatusReport, name: &str) -> u64 {
        s.counters.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
    }

    /// Waits until the assembler has published no frame for `quiet` (the stream's last frames are published at
    /// its timeout), at most `limit`; returns the last status.
    pub fn drain(&mut self, quiet: Duration, limit: Duration) -> anyhow::Result<StatusReport> {
        let t = Instant::now();
        let mut last = (u64::MAX, Instant::now());
        loop {
            let s = self.status()?;
            let frames =
                Self::counter(&s, "assembler.frames_complete") + Self::counter(&s, "assembler.frames_incomplete");
            if frames != last.0 {
                last = (frames, Instant::now());
            } else if last.1.elapsed() > quiet || t.elapsed() > limit {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Eight UDP sockets bound to consecutive ports on 127.0.0.1, and the first port. The bases are drawn at random
/// so that benchmarks and tests running beside this one do not collide.
pub fn bind_eight_udp() -> anyhow::Result<(u16, Vec<std::net::UdpSocket>)> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut x = (u64::from(std::process::id()) << 32 ^ now) | 1;
    for _ in 0..200 {
        // xorshift: spread over 20000..60000
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 20_000 + (x % 40_000) as u16;
        let socks: Result<Vec<_>, _> = (0..8).map(|i| std::net::UdpSocket::bind(("127.0.0.1", base + i))).collect();
        if let Ok(socks) = socks {
            return Ok((base, socks));
        }
    }
    anyhow::bail!("no eight free consecutive UDP ports on 127.0.0.1")
}

/// `ringdaq run` in `dir` on `port_base`, a process group leader (the stages it starts are in its group: one
/// signal ends them all), and tied to this process: it gets SIGKILL if the benchmark dies.
fn supervisor_command(dir: &std::path::Path, port_base: u16) -> anyhow::Result<Command> {
    use std::os::unix::process::CommandExt;
    let exe_dir = std::env::current_exe()?.parent().context("exe dir")?.to_path_buf();
    let mut cmd = Command::new(exe_dir.join("ringdaq"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("ringdaq.log"))?;
    cmd.arg("--runtime-dir")
        .arg(dir.join("rt"))
        .args(["run", "--port-base", &port_base.to_string(), "--config"])
        .arg(dir.join("ringdaq.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
    // async-signal-safe. The supervisor dies with the benchmark, however the benchmark ends (its stages, which
    // outlive it, end after their orphan timeout).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for pgid in self.earlier_groups.iter().copied().chain([self.child.id()]) {
            if let Some(p) = rustix::process::Pid::from_raw(pgid as i32) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
