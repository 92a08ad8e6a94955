//! A real pipeline for tests: `ringdaq run` as a child process with its own runtime directory and ports,
//! driven through the same client API as the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use detector::sim::{SimConfig, SimReport, Simulator};
use detector::{Format, k2};
use shm_protocol::messages::{AcquisitionStatus, Compression, Reply, Request, StatusReport, SyncMode};

use crate::{ChildGuard, TempDir, bin_path, free_udp_port_base, wait_for};

/// Ring sizes small enough for tests (about 110 MB of shared memory), and a frame timeout long enough that a
/// test process paused by the machine does not look like a gap in the stream.
pub const SMALL_RINGS: &str =
    "[rings]\nblock_slots = 32\ndatagrams_per_slot = 64\nframe_slots = 8\n[assembler]\ntimeout_ms = 500\n";

/// Spawns `ringdaq run` on `dir/ringdaq.toml`, runtime directory `dir/rt`, log appended to `dir/ringdaq.log`.
fn launch(dir: &Path, port_base: u16, env: &[(&str, &str)]) -> ChildGuard {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("ringdaq.log")).expect("log");
    ChildGuard::spawn(
        Command::new(bin_path("ringdaq"))
            .arg("--runtime-dir")
            .arg(dir.join("rt"))
            .args(["run", "--port-base", &port_base.to_string(), "--config"])
            .arg(dir.join("ringdaq.toml"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log)),
    )
    .expect("spawn ringdaq run")
}

/// A running `ringdaq run`.
pub struct Pipeline {
    /// The supervisor; killed (and with it the stages) before `dir` is removed: fields drop in this order, and
    /// a running pipeline writing into its directory makes the removal fail.
    child: ChildGuard,
    /// Runtime directory, output files and the log.
    pub dir: TempDir,
    /// UDP port of sector 0.
    pub port_base: u16,
    /// Process groups of supervisors killed alone ([`Pipeline::kill_supervisor`]): the stages they started
    /// outlive them, adopted by the next; whatever is left of them is killed when the `Pipeline` drops.
    earlier_groups: Vec<u32>,
}

impl Pipeline {
    /// Starts a pipeline with [`SMALL_RINGS`] plus `extra_config` (TOML) and waits until its stages are ready.
    pub fn start(extra_config: &str) -> Self {
        Self::start_with_env(extra_config, &[])
    }

    /// [`Pipeline::start`] with extra environment variables for the supervisor and its stages.
    pub fn start_with_env(extra_config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_config(&format!("{SMALL_RINGS}{extra_config}"), env)
    }

    /// A pipeline with exactly `config` (TOML; ring sizes default to the production ones unless it sets them).
    pub fn start_with_rings(config: &str) -> Self {
        Self::start_config(config, &[])
    }

    /// A pipeline with top-level configuration keys `keys` (TOML) and [`SMALL_RINGS`], on UDP ports from
    /// `port_base` (several pipelines that each take some of one detector's sectors share its port base).
    pub fn start_on_ports(port_base: u16, keys: &str) -> Self {
        Self::start_at(port_base, &format!("{keys}{SMALL_RINGS}"), &[])
    }

    fn start_config(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_at(free_udp_port_base(8), config, env)
    }

    fn start_at(port_base: u16, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("pipeline").expect("temp dir");
        let cfg = dir.path().join("ringdaq.toml");
        std::fs::write(&cfg, config).expect("config");
        let child = launch(dir.path(), port_base, env);
        let p = Self { dir, port_base, child, earlier_groups: Vec::new() };
        p.wait_ready();
        p
    }

    fn wait_ready(&self) {
        let ready = wait_for(Duration::from_secs(20), || {
            let s = self.try_status()?;
            s.stages.iter().all(|st| st.state == "running").then_some(())
        });
        assert!(ready.is_some(), "pipeline did not become ready:\n{}", self.log());
    }

    /// The supervisor's pid.
    pub fn supervisor_pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the supervisor alone (as a crash would) and reaps it; its stages live on.
    pub fn kill_supervisor(&mut self) {
        if self.child.id() != 0 {
            self.earlier_groups.push(self.child.id());
        }
        self.child.kill_alone();
    }

    /// Starts `ringdaq run` again in the same runtime directory, on the same ports and configuration (killing the
    /// running one first, alone), and waits until its stages are ready.
    pub fn relaunch(&mut self) {
        self.kill_supervisor();
        self.child = launch(self.dir.path(), self.port_base, &[]);
        self.wait_ready();
    }

    /// Starts a second `ringdaq run` in the same runtime directory while this one runs; waits up to `timeout`
    /// for it to exit and returns its exit status and log (`None`: it still ran, and was killed).
    pub fn run_second(&self, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
        let dir = self.dir.path().join("second");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::copy(self.dir.path().join("ringdaq.toml"), dir.join("ringdaq.toml")).expect("config");
        let log = std::fs::File::create(dir.join("ringdaq.log")).expect("log");
        let mut child = ChildGuard::spawn(
            Command::new(bin_path("ringdaq"))
                .arg("--runtime-dir")
                .arg(self.runtime_dir())
                .args(["run", "--port-base", &self.port_base.to_string(), "--config"])
                .arg(dir.join("ringdaq.toml"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log)),
        )
        .expect("spawn");
        let st = child.wait_timeout(timeout).ok().flatten();
        (st, std::fs::read_to_string(dir.join("ringdaq.log")).unwrap_or_default())
    }

    /// SIGKILLs the supervisor and every stage (every process of the pipeline at once, as a crash of the machine's
    /// service would, short of the kernel).
    pub fn kill_everything(&mut self) {
        for &g in &self.earlier_groups {
            crate::kill_group(g);
        }
        self.child.kill();
    }

    /// Starts `ringdaq run` again as systemd restarts a service with an fd store: `fds` (name, descriptor) passed
    /// as `LISTEN_FDS` from descriptor 3 on, named in `LISTEN_FDNAMES`, `LISTEN_PID` its own; waits until ready.
    pub fn relaunch_with_stored_fds(&mut self, fds: &[(String, std::os::fd::OwnedFd)], env: &[(&str, &str)]) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        self.kill_supervisor();
        // Out of the way of 3.. first, so that placing one does not overwrite another (nothing else above 100).
        let high: Vec<std::os::fd::OwnedFd> =
            fds.iter().map(|(_, fd)| rustix::io::fcntl_dupfd_cloexec(fd, 100).expect("dup")).collect();
        let raw: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ringdaq.log"))
            .expect("log");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(bin_path("ringdaq"))
            .arg("--runtime-dir")
            .arg(self.runtime_dir())
            .args(["run", "--port-base", &self.port_base.to_string(), "--config"])
            .arg(self.dir.path().join("ringdaq.toml"))
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let placing = move || -> std::io::Result<()> {
            for (i, &fd) in raw.iter().enumerate() {
                // SAFETY: dup2 is async-signal-safe; `fd` is open in the child (inherited from the parent, which
                // keeps `high` until the spawn returned) and 3 + i is a plain descriptor number.
                if unsafe { libc::dup2(fd, 3 + i as i32) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child: it only calls dup2 (async-signal-safe) on integers it
        // captured (the Vec was built in the parent and is only read); it allocates nothing.
        unsafe {
            cmd.pre_exec(placing);
        }
        self.child = ChildGuard::spawn(&mut cmd).expect("spawn ringdaq run");
        drop(high);
        self.wait_ready();
    }

    /// The pid of stage `name` as the supervisor reports it (0 while it is not running).
    pub fn stage_pid(&self, name: &str) -> u32 {
        self.try_status().and_then(|s| s.stages.into_iter().find(|s| s.name == name)).map_or(0, |s| s.pid)
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
        self.acquire_compressed(frames, name, sync, Compression::None)
    }

    /// [`Pipeline::acquire`] with frames stored with `compression`.
    pub fn acquire_compressed(
        &self,
        frames: u64,
        name: &str,
        sync: SyncMode,
        compression: Compression,
    ) -> (u64, PathBuf) {
        let path = self.dir.path().join(name);
        match self.call(Request::Acquire { frames, path: path.display().to_string(), sync, compression }) {
            Ok(Reply::Armed { id }) => (id, path),
            other => panic!("acquire failed: {other:?}\n{}", self.log()),
        }
    }

    /// Acquisition `id` as the supervisor reports it (None: no answer, or no such acquisition).
    pub fn acquisition(&self, id: u64) -> Option<AcquisitionStatus> {
        match self.call(Request::Acquisition { id }) {
            Ok(Reply::Acquisition(a)) => Some(a),
            _ => None,
        }
    }

    /// Waits until `n` frames of acquisition `id` are assigned (they arrived; the file may still be written).
    pub fn wait_assigned(&self, id: u64, n: u64, timeout: Duration) {
        let ok = wait_for(timeout, || self.acquisition(id).filter(|a| a.assigned >= n));
        assert!(ok.is_some(), "acquisition {id} did not get {n} frames in {timeout:?}:\n{}", self.log());
    }

    /// Waits until acquisition `id` is done or failed.
    pub fn wait(&self, id: u64, timeout: Duration) -> AcquisitionStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.acquisition(id)
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
        SimConfig { port_base: self.port_base, frames, fps: Some(fps), mode: k2::IS, ..SimConfig::default() }
    }

    /// Runs the simulator to the end (in this process).
    pub fn simulate(&self, cfg: SimConfig) -> SimReport {
        Simulator::new(cfg).expect("simulator").run(&AtomicBool::new(false)).expect("simulator run")
    }

    /// Waits for the supervisor to exit (after a shutdown asked otherwise); whether it exited 0.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let st = self.child.wait_timeout(timeout).ok().flatten();
        st.is_some_and(|s| s.success())
    }

    /// Runs `ringdaq --runtime-dir <this pipeline's> ARGS` to its end: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin_path("ringdaq"))
            .arg("--runtime-dir")
            .arg(self.runtime_dir())
            .args(args)
            .output()
            .expect("ringdaq");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    /// Starts `ringdaq record --datagrams N --out FILE` against this pipeline and waits until its file exists.
    pub fn start_recording(&self, datagrams: u64, out: &Path) -> ChildGuard {
        let recorder = ChildGuard::spawn(
            Command::new(bin_path("ringdaq"))
                .arg("--runtime-dir")
                .arg(self.runtime_dir())
                .args(["record", "--datagrams", &datagrams.to_string(), "--seconds", "60", "--out"])
                .arg(out)
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .expect("ringdaq record");
        assert!(wait_for(Duration::from_secs(10), || out.exists().then_some(())).is_some(), "the recorder started");
        recorder
    }

    /// Replays recording `rec` into this pipeline (`ringdaq sim --replay`, at the recorded spacing) and returns
    /// what it printed; the replay must succeed.
    pub fn replay(&self, rec: &Path) -> String {
        self.replay_paced(rec, &["--speed", "1"])
    }

    /// [`Pipeline::replay`] paced by `pace` (`--speed X`, or `--fps N` for a Gatan recording).
    pub fn replay_paced(&self, rec: &Path, pace: &[&str]) -> String {
        let out = Command::new(bin_path("ringdaq"))
            .args(["sim", "--port-base", &self.port_base.to_string()])
            .args(pace)
            .arg("--replay")
            .arg(rec)
            .output()
            .expect("ringdaq sim --replay");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into()
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
        for &g in &self.earlier_groups {
            crate::kill_group(g);
        }
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
pub fn expected_frames(mode: Format) -> Vec<Vec<u16>> {
    (0..detector::pattern::PATTERN_PERIOD).map(|v| detector::pattern::expected_frame(&*mode, v)).collect()
}

/// The simulator's frames of any pattern, by frame id: every frame made once and kept (the counting pattern's
/// period of 8), or made when asked (a pattern without a period, such as `stem`; about 1 ms a K2 IS frame).
pub struct ExpectedFrames {
    pattern: detector::pattern::Pattern,
    frames: detector::pattern::Frames,
    pixels: usize,
    period: Vec<Vec<u16>>,
}

impl ExpectedFrames {
    /// The frames of `pattern` in format `mode`.
    pub fn new(mode: Format, pattern: detector::pattern::Pattern) -> Self {
        let period = match pattern.period() {
            Some(n) => (0..n).map(|v| pattern.frame(&*mode, v)).collect(),
            None => Vec::new(),
        };
        Self { pattern, frames: pattern.frames(&*mode), pixels: mode.frame_pixels(), period }
    }

    /// The pattern.
    pub fn pattern(&self) -> detector::pattern::Pattern {
        self.pattern
    }

    /// Frame `frame_id`.
    pub fn frame(&self, frame_id: u32) -> std::borrow::Cow<'_, [u16]> {
        if !self.period.is_empty() {
            return std::borrow::Cow::Borrowed(&self.period[frame_id as usize % self.period.len()]);
        }
        let mut f = vec![0u16; self.pixels];
        self.frames.fill(frame_id, &mut f);
        std::borrow::Cow::Owned(f)
    }
}

/// Checks an acquisition's file without holding it in memory (thousands of frames are gigabytes): its header
/// says (frames, rows, cols) of `<u2`, every frame is at its index in frame-id order from `first_frame_id`,
/// complete, and pixel-equal to the simulator's frame. Returns the sidecar.
pub fn verify_large_acquisition(path: &Path, mode: Format, frames: u64, first_frame_id: u32) -> writer::Sidecar {
    verify_large_acquisition_of(path, mode, detector::pattern::Pattern::Counting, frames, first_frame_id)
}

/// [`verify_large_acquisition`] for frames of any simulator pattern.
pub fn verify_large_acquisition_of(
    path: &Path,
    mode: Format,
    pattern: detector::pattern::Pattern,
    frames: u64,
    first_frame_id: u32,
) -> writer::Sidecar {
    use std::io::Read;
    let side = writer::sidecar_path(path);
    let sidecar: writer::Sidecar =
        serde_json::from_str(&std::fs::read_to_string(&side).expect("sidecar")).expect("sidecar json");
    assert_eq!(sidecar.frames, frames, "frames in the sidecar");
    assert_eq!(sidecar.complete_frames, frames, "complete frames in the sidecar");
    for (i, m) in sidecar.frame_list.iter().enumerate() {
        assert_eq!(m.index, i as u64, "frame list in index order");
        assert_eq!(m.frame_id, first_frame_id.wrapping_add(i as u32), "frame {i}: frame id");
        assert!(m.complete, "frame {i} incomplete: {m:?}");
    }
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // npy 1.0: magic (6), version (2), header length (u16 LE), header.
    let mut pre = [0u8; 10];
    f.read_exact(&mut pre).expect("npy preamble");
    let header_len = 10 + usize::from(u16::from_le_bytes([pre[8], pre[9]]));
    let mut header = pre.to_vec();
    header.resize(header_len, 0);
    f.read_exact(&mut header[10..]).expect("npy header");
    let npy = npyz::NpyFile::new(&header[..]).expect("npy header parses");
    assert_eq!(npy.shape(), &[frames, mode.rows() as u64, mode.cols() as u64], "shape");
    assert_eq!(npy.dtype(), npyz::DType::Plain("<u2".parse().expect("dtype")), "dtype");
    let expected = ExpectedFrames::new(mode, pattern);
    let mut buf = vec![0u8; mode.frame_bytes()];
    for i in 0..frames {
        f.read_exact(&mut buf).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        let frame = expected.frame(first_frame_id.wrapping_add(i as u32));
        // The machine is little-endian, as `<u2` is.
        let want: &[u8] = bytemuck::cast_slice(&frame);
        assert!(buf == want, "frame {i} differs from the simulator's");
    }
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).expect("tail");
    assert!(rest.is_empty(), "{} bytes after the last frame", rest.len());
    sidecar
}
