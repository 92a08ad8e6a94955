//! A real pipeline for tests: `ringdaq run` as a child process with its own runtime directory and ports,
//! driven through the same client API as the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use detector::Mode;
use detector::sim::{SimConfig, SimReport, Simulator};
use shm_protocol::messages::{AcquisitionStatus, Reply, Request, StatusReport, SyncMode};

use crate::{ChildGuard, TempDir, bin_path, free_udp_port_base, wait_for};

/// Ring sizes small enough for tests (about 110 MB of shared memory), and a frame timeout long enough that a
/// test process paused by the machine does not look like a gap in the stream.
pub const SMALL_RINGS: &str =
    "[rings]\nblock_slots = 32\ndatagrams_per_slot = 64\nframe_slots = 8\n[assembler]\ntimeout_ms = 500\n";

/// A running `ringdaq run`.
pub struct Pipeline {
    /// Runtime directory, output files and the log.
    pub dir: TempDir,
    /// UDP port of sector 0.
    pub port_base: u16,
    child: ChildGuard,
}

impl Pipeline {
    /// Starts a pipeline with [`SMALL_RINGS`] plus `extra_config` (TOML) and waits until its stages are ready.
    pub fn start(extra_config: &str) -> Self {
        let dir = TempDir::new("pipeline").expect("temp dir");
        let port_base = free_udp_port_base(8);
        let cfg = dir.path().join("ringdaq.toml");
        std::fs::write(&cfg, format!("{SMALL_RINGS}{extra_config}")).expect("config");
        let log = std::fs::File::create(dir.path().join("ringdaq.log")).expect("log");
        let child = ChildGuard::spawn(
            Command::new(bin_path("ringdaq"))
                .arg("--runtime-dir")
                .arg(dir.path().join("rt"))
                .args(["run", "--port-base", &port_base.to_string(), "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log)),
        )
        .expect("spawn ringdaq run");
        let p = Self { dir, port_base, child };
        let ready = wait_for(Duration::from_secs(20), || {
            let s = p.try_status()?;
            s.stages.iter().all(|st| st.state == "running").then_some(())
        });
        assert!(ready.is_some(), "pipeline did not become ready:\n{}", p.log());
        p
    }

    /// The runtime directory.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("rt")
    }

    /// The supervisor's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ringdaq.log")).unwrap_or_default()
    }

    /// Sends one request on a fresh client connection.
    pub fn call(&self, req: Request) -> anyhow::Result<Reply> {
        let mut c = supervisor::client::connect(&self.runtime_dir())?;
        supervisor::client::call(&mut c, req)
    }

    fn try_status(&self) -> Option<StatusReport> {
        match self.call(Request::Status).ok()? {
            Reply::Status(s) => Some(*s),
            _ => None,
        }
    }

    /// The pipeline's status.
    pub fn status(&self) -> StatusReport {
        self.try_status().expect("status")
    }

    /// Counters by name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.status().counters.into_iter().collect()
    }

    /// Arms an acquisition into `<dir>/<name>` and returns its id and path.
    pub fn acquire(&self, frames: u64, name: &str, sync: SyncMode) -> (u64, PathBuf) {
        let path = self.dir.path().join(name);
        match self.call(Request::Acquire { frames, path: path.display().to_string(), sync }) {
            Ok(Reply::Armed { id }) => (id, path),
            other => panic!("acquire failed: {other:?}\n{}", self.log()),
        }
    }

    /// Waits until `n` frames of acquisition `id` are assigned (they arrived; the file may still be written).
    pub fn wait_assigned(&self, id: u64, n: u64, timeout: Duration) {
        let ok = wait_for(timeout, || match self.call(Request::Acquisition { id }) {
            Ok(Reply::Acquisition(a)) if a.assigned >= n => Some(()),
            _ => None,
        });
        assert!(ok.is_some(), "acquisition {id} did not get {n} frames in {timeout:?}:\n{}", self.log());
    }

    /// Waits until acquisition `id` is done or failed.
    pub fn wait(&self, id: u64, timeout: Duration) -> AcquisitionStatus {
        let t = Instant::now();
        loop {
            if let Ok(Reply::Acquisition(s)) = self.call(Request::Acquisition { id })
                && (s.state == "done" || s.state == "failed")
            {
                return s;
            }
            assert!(t.elapsed() < timeout, "acquisition {id} did not finish in {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A simulator configuration aimed at this pipeline.
    pub fn sim_config(&self, frames: u64, fps: f64) -> SimConfig {
        SimConfig { port_base: self.port_base, frames, fps: Some(fps), mode: Mode::Is, ..SimConfig::default() }
    }

    /// Runs the simulator to the end (in this process).
    pub fn simulate(&self, cfg: SimConfig) -> SimReport {
        Simulator::new(cfg).expect("simulator").run(&AtomicBool::new(false)).expect("simulator run")
    }

    /// Asks the pipeline to shut down and waits for it; returns whether it exited 0.
    pub fn shutdown(mut self) -> bool {
        let _ = self.call(Request::Shutdown);
        let st = self.child.wait_timeout(Duration::from_secs(30)).ok().flatten();
        st.is_some_and(|s| s.success())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- ringdaq log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// An acquisition's file, read back: the array and the sidecar.
pub struct Acquired {
    /// Shape (frames, rows, cols).
    pub shape: Vec<u64>,
    /// The pixels.
    pub pixels: Vec<u16>,
    /// The sidecar.
    pub sidecar: writer::Sidecar,
}

impl Acquired {
    /// Reads `path` with npyz and its sidecar with serde.
    pub fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let npy = npyz::NpyFile::new(&bytes[..]).expect("npy header");
        let shape = npy.shape().to_vec();
        assert_eq!(npy.dtype(), npyz::DType::Plain("<u2".parse().expect("dtype")), "dtype");
        let pixels: Vec<u16> = npy.into_vec().expect("npy data");
        let side = writer::sidecar_path(path);
        let sidecar = serde_json::from_str(&std::fs::read_to_string(&side).expect("sidecar")).expect("sidecar json");
        Self { shape, pixels, sidecar }
    }

    /// Frame `i`'s pixels.
    pub fn frame(&self, i: usize) -> &[u16] {
        let n = (self.shape[1] * self.shape[2]) as usize;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// The simulator's frames for each pattern variant, computed once.
pub fn expected_frames(mode: Mode) -> Vec<Vec<u16>> {
    let g = mode.geometry();
    (0..detector::pattern::PATTERN_PERIOD).map(|v| detector::pattern::expected_frame(&g, v)).collect()
}
