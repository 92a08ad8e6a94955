//! `ringdaq run` as a user starts it, in a runtime directory of its own, for the benchmarks that need the whole
//! pipeline. The process is killed and the directory removed when the [`Pipeline`] is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use shm_protocol::control::Connection;
use shm_protocol::messages::{Reply, Request, StatusReport};

/// A running `ringdaq run` (no simulator: the benchmark sends).
pub struct Pipeline {
    child: Child,
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
        let exe_dir = std::env::current_exe()?.parent().context("exe dir")?.to_path_buf();
        let dir = std::env::temp_dir().join(format!("ringdaq-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("ringdaq.toml");
        std::fs::write(&cfg, config)?;
        let port_base = 30_000 + (std::process::id() % 20_000) as u16;
        let child = Command::new(exe_dir.join("ringdaq"))
            .arg("--runtime-dir")
            .arg(dir.join("rt"))
            .args(["run", "--port-base", &port_base.to_string(), "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("ringdaq.log"))?))
            .spawn()
            .context("running ringdaq (build it first: cargo build --release)")?;
        let t = Instant::now();
        let conn = loop {
            match supervisor::client::connect(&dir.join("rt")) {
                Ok(c) => break c,
                Err(_) if t.elapsed() < Duration::from_secs(20) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        };
        let mut p = Self { child, dir, port_base, conn };
        let t = Instant::now();
        while !p.status()?.stages.iter().all(|s| s.state == "running") {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(20), "stages did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(p)
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

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
