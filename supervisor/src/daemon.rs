//! The running supervisor: owns the region and the sockets, runs and watches the stages, serves clients.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use shm_protocol::Region;
use shm_protocol::control::{Connection, ControlError, ControlListener};
use shm_protocol::messages::{
    AcquisitionStatus, PROTOCOL_VERSION, Reply, Request, Role, StageCommand, StageStatus, StatusReport, SyncMode,
};
use shm_protocol::pipeline::{self, BLOCK_RING, FRAME_RING, PipelineArea, PipelineSizes, Stage, acq_state, sync_mode};

use crate::config::{self, Config};
use crate::geometry::region_geometry;
use crate::stages;

/// What the supervisor knows about one stage.
#[derive(Debug, Default)]
struct StageSlot {
    child: Option<Child>,
    conn: Option<Connection>,
    ready: bool,
    restarts: u32,
    recent: VecDeque<Instant>,
    last_exit: Option<String>,
    next_start: Option<Instant>,
    /// Set when the supervisor killed the stage as hung: why (its exit is described with it).
    hung: Option<String>,
    /// When the running child was started.
    started_at: Option<Instant>,
    /// Deaths in a row, each soon after its start: what the backoff grows with.
    quick_deaths: u32,
    /// `ringdaq detach`: not started, not restarted; a process run by hand may attach as this stage.
    detached: bool,
    /// The hand-run process attached while detached (its connection is `conn`).
    manual_pid: Option<u32>,
    /// `ringdaq restart`: the coming exit is asked for; restart at once, outside the budget.
    restart_requested: bool,
}

/// A stage that dies later than this after its start had been working: it is restarted at once.
const SETTLED: Duration = Duration::from_secs(1);

impl StageSlot {
    /// Asks the running child to finish what it holds and exit: with a Shutdown command once it is connected,
    /// else with SIGTERM. Its exit then takes the watcher's usual path.
    fn ask_to_stop(&self) {
        let Some(child) = self.child.as_ref() else { return };
        let asked = self.conn.as_ref().is_some_and(|c| c.send(&StageCommand::Shutdown).is_ok());
        if !asked && let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

/// What the watcher knows of a stage's progress, for hang detection.
#[derive(Debug, Default)]
struct Progress {
    pid: u32,
    heartbeat: u64,
    /// Since when the stage has had input without its heartbeat moving.
    stalled_since: Option<Instant>,
}

#[derive(Debug)]
struct State {
    stages: [StageSlot; 3],
    next_acquisition: u64,
}

/// The supervisor's shared state, used by the watcher, the control server and the command that started it.
pub struct Supervisor {
    cfg: Config,
    region: Region,
    sockets: Vec<OwnedFd>,
    control_path: PathBuf,
    state: Mutex<State>,
    shutdown: AtomicBool,
    failure: Mutex<Option<String>>,
    started: Instant,
    /// Rates over the last second, from counter samples the watcher takes.
    rates: Mutex<Rates>,
}

/// Two samples of the counters, a second or so apart, and the rates between them.
#[derive(Debug, Default)]
struct Rates {
    last: Option<(Instant, std::collections::BTreeMap<String, u64>)>,
    current: Vec<(String, f64)>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("control", &self.control_path).finish_non_exhaustive()
    }
}

/// An external consumer's hold on the frame ring, for as long as its connection lasts.
struct Subscriber<'r> {
    index: usize,
    /// A lossless consumer's gate, advanced on its behalf (its own mapping is read-only).
    gate: Option<shm_protocol::Consumer<'r>>,
}

impl Subscriber<'_> {
    fn release(&mut self, upto: u64) {
        if let Some(gate) = self.gate.as_mut() {
            // A consumer cannot release what was not published (nor, by going back, hold the pipeline).
            let upto = upto.min(gate.ring().published());
            gate.commit(upto);
        }
    }

    fn end(self, region: &Region) {
        if let Ok(ring) = region.ring(FRAME_RING) {
            let _ = ring.set_wake_always(self.index, false);
            let _ = ring.release_consumer(self.index);
        }
        tracing::info!(cursor = self.index, "consumer gone");
    }
}

/// Longest sleep of the stage watcher: how soon it notices a stop signal or a hang (deaths and due restarts
/// wake it at once). Longer costs responsiveness, shorter costs an idle machine CPU.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// Creates the runtime directory with mode 0700 (or checks an existing one is ours and private).
pub fn prepare_runtime_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating runtime directory {}", dir.display()))?;
    }
    let md = std::fs::metadata(dir).with_context(|| format!("runtime directory {}", dir.display()))?;
    anyhow::ensure!(md.is_dir(), "runtime directory {} is not a directory", dir.display());
    anyhow::ensure!(
        md.uid() == rustix::process::geteuid().as_raw(),
        "runtime directory {} belongs to uid {}, not to us",
        dir.display(),
        md.uid()
    );
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl Supervisor {
    /// Creates the region, binds the sockets and the control socket. Stages are started by [`Supervisor::run`].
    pub fn new(cfg: Config) -> anyhow::Result<(Arc<Self>, ControlListener)> {
        cfg.validate()?;
        let runtime = cfg.runtime_dir();
        prepare_runtime_dir(&runtime)?;
        let sizes = PipelineSizes {
            geometry: region_geometry(cfg.mode),
            block_slots: cfg.rings.block_slots,
            datagrams_per_slot: cfg.rings.datagrams_per_slot,
            frame_slots: cfg.rings.frame_slots,
            frame_cursors: cfg.rings.frame_cursors,
            fill_value: cfg.rings.fill_value,
            invalid_reasons: cfg.mode.invalid_reasons(),
        };
        let bytes = sizes.region_spec();
        let total = shm_protocol::layout::compute_layout(&bytes)?.region_size;
        check_memory(total)?;
        let region = sizes.create_region().context("creating the shared region")?;
        let sockets = crate::sockets::bind_sector_sockets(&cfg)?;
        let control_path = config::control_socket(&runtime);
        let listener = ControlListener::bind(&control_path).with_context(|| {
            format!("control socket {} (is another ringdaq running there?)", control_path.display())
        })?;
        // For `ringdaq inspect` when this process no longer answers.
        let pid_file = runtime.join(crate::inspect_cmd::PID_FILE);
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pid_file.display()))?;
        tracing::info!(
            region_mb = total / (1 << 20),
            control = %control_path.display(),
            mode = %cfg.mode,
            ports = format!("{}:{}-{}", cfg.bind, cfg.port_base, usize::from(cfg.port_base) + cfg.mode.streams() - 1),
            "pipeline created"
        );
        let sup = Arc::new(Self {
            cfg,
            region,
            sockets,
            control_path,
            state: Mutex::new(State { stages: Default::default(), next_acquisition: 1 }),
            shutdown: AtomicBool::new(false),
            failure: Mutex::new(None),
            started: Instant::now(),
            rates: Mutex::new(Rates::default()),
        });
        Ok((sup, listener))
    }

    fn area(&self) -> &PipelineArea {
        // The region was created as a pipeline region in `new`, so this cannot fail.
        pipeline::pipeline_area(&self.region).unwrap_or_else(|e| panic!("{e}"))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The control socket's path.
    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Asks the pipeline to stop.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Why the pipeline failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn fail(&self, why: String) {
        tracing::error!("{why}");
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.request_shutdown();
    }

    /// Whether all three stages have attached and reported ready.
    pub fn ready(&self) -> bool {
        self.lock().stages.iter().all(|s| s.ready)
    }

    /// Waits until every stage is ready; false on timeout or shutdown.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout && !self.shutting_down() {
            if self.ready() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Runs the control server and the stage watcher until shutdown; stops the stages in order before returning.
    pub fn run(self: &Arc<Self>, listener: ControlListener, stop_flag: &'static AtomicBool) -> anyhow::Result<()> {
        std::thread::scope(|s| {
            let sup = self.clone();
            // Every thread logs in the process's span (stage and acquisition on every line).
            let span = tracing::Span::current();
            s.spawn(move || span.in_scope(|| sup.serve(listener)));
            let sup = self.clone();
            // Stages are started, restarted and stopped from this one thread: PR_SET_PDEATHSIG ties a child to
            // the thread that forked it.
            let span = tracing::Span::current();
            let watcher = s.spawn(move || span.in_scope(|| sup.watch(stop_flag)));
            if watcher.join().is_err() {
                self.fail("the stage watcher panicked; stopping".into());
            }
            // However the watcher ended, the server must end too.
            self.request_shutdown();
        });
        Ok(())
    }

    /// Starts the stages, restarts the ones that die (within the budget), kills the ones that hang, and on
    /// shutdown stops them in order.
    ///
    /// Deaths are noticed through a pidfd per child (readable the moment the process ends), so a restart does not
    /// wait for a polling period; the loop wakes at least every [`WATCH_TICK`] for hangs, signals and restarts
    /// due after a backoff.
    fn watch(&self, stop_flag: &AtomicBool) {
        let mut pidfds: [Option<OwnedFd>; 3] = Default::default();
        let mut progress: [Progress; 3] = Default::default();
        for st in Stage::ALL {
            pidfds[st as usize] = self.start(st);
        }
        while !self.shutting_down() {
            if stop_flag.load(Ordering::Relaxed) {
                tracing::info!("signal received: shutting down");
                self.request_shutdown();
                break;
            }
            self.wait_for_exit(&pidfds);
            for st in Stage::ALL {
                if let Some(fd) = self.check_stage(st) {
                    pidfds[st as usize] = fd;
                }
            }
            self.check_hangs(&mut progress);
            self.sample_rates();
        }
        self.stop_all();
    }

    /// Every second: the rates since the previous sample.
    fn sample_rates(&self) {
        let mut r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if r.last.as_ref().is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_secs(1)) {
            return;
        }
        let c = self.area().counters();
        if let Some((t, prev)) = &r.last {
            let dt = now.duration_since(*t).as_secs_f64();
            let d = |names: &[&str]| {
                names
                    .iter()
                    .map(|n| c.get(*n).copied().unwrap_or(0).saturating_sub(prev.get(*n).copied().unwrap_or(0)))
                    .sum::<u64>() as f64
                    / dt
            };
            r.current = vec![
                ("datagrams_per_s".into(), d(&["receiver.datagrams"])),
                ("frames_per_s".into(), d(&["assembler.frames_complete", "assembler.frames_incomplete"])),
                ("receive_mb_per_s".into(), d(&["receiver.bytes"]) / 1e6),
                ("write_mb_per_s".into(), d(&["writer.bytes"]) / 1e6),
            ];
        }
        r.last = Some((now, c));
    }

    /// Sleeps until a child ends, a restart is due, or [`WATCH_TICK`] passes.
    fn wait_for_exit(&self, pidfds: &[Option<OwnedFd>; 3]) {
        let mut timeout = WATCH_TICK;
        {
            let g = self.lock();
            for s in &g.stages {
                if let Some(at) = s.next_start {
                    timeout = timeout.min(at.saturating_duration_since(Instant::now()));
                }
            }
        }
        let mut fds: Vec<rustix::event::PollFd<'_>> =
            pidfds.iter().flatten().map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)).collect();
        if fds.is_empty() && timeout.is_zero() {
            return;
        }
        let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: timeout.as_nanos().min(999_999_999) as i64 };
        // EINTR (a signal) only ends the sleep early.
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }

    /// Kills a stage that has had input for `hang_timeout_ms` without its heartbeat moving (stopped, deadlocked,
    /// or spinning without progress); its death then takes the normal restart path.
    fn check_hangs(&self, progress: &mut [Progress; 3]) {
        let limit = Duration::from_millis(self.cfg.supervisor.hang_timeout_ms);
        if limit.is_zero() {
            return;
        }
        let area = self.area();
        let now = Instant::now();
        for st in Stage::ALL {
            let p = &mut progress[st as usize];
            let (pid, ready) = {
                let g = self.lock();
                let s = &g.stages[st as usize];
                (s.child.as_ref().map_or(0, Child::id), s.ready && s.hung.is_none())
            };
            let beat = area.stage(st).heartbeat.load(Ordering::Relaxed);
            if pid != p.pid || beat != p.heartbeat || !ready || !self.has_input(st) {
                *p = Progress { pid, heartbeat: beat, stalled_since: None };
                continue;
            }
            let since = *p.stalled_since.get_or_insert(now);
            if now.duration_since(since) < limit {
                continue;
            }
            let why = format!("hung: no progress for {} ms while its input waited", limit.as_millis());
            tracing::error!(stage = st.name(), pid, "{why}; killing it");
            self.lock().stages[st as usize].hung = Some(why);
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            p.stalled_since = None;
        }
    }

    /// Whether a stage has work waiting for it that it is free to do (its output has room).
    fn has_input(&self, st: Stage) -> bool {
        let ring_full = |ring: usize| {
            self.region
                .ring(ring)
                .is_ok_and(|r| r.min_gating_cursor().is_some_and(|c| r.published().saturating_sub(c) >= r.slot_count()))
        };
        let unread = |ring: usize, cursor: usize| {
            self.region.ring(ring).is_ok_and(|r| r.consumer_state(cursor).is_ok_and(|(c, _, _)| r.published() > c))
        };
        match st {
            Stage::Receiver => {
                !ring_full(BLOCK_RING)
                    && self.sockets.iter().any(|s| rustix::io::ioctl_fionread(s).is_ok_and(|n| n > 0))
            }
            Stage::Assembler => unread(BLOCK_RING, pipeline::ASSEMBLER_CURSOR) && !ring_full(FRAME_RING),
            Stage::Writer => unread(FRAME_RING, pipeline::WRITER_CURSOR),
        }
    }

    /// Starts a stage; returns a pidfd that becomes readable when it ends (None if the kernel has no pidfds:
    /// the watcher's tick then notices the death).
    fn start(&self, st: Stage) -> Option<OwnedFd> {
        let child = match stages::spawn(st, &self.control_path, &self.cfg) {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!("{e:#}"));
                return None;
            }
        };
        let pidfd =
            rustix::process::pidfd_open(rustix::process::Pid::from_child(&child), rustix::process::PidfdFlags::empty())
                .map_err(|e| tracing::debug!(error = %e, "no pidfd; watching by polling"))
                .ok();
        // The stage records its own pid once it runs (the assembler takes the receiver's as "a receiver is
        // receiving"); the supervisor only clears it when the stage dies.
        self.area().stage(st).starts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stage = st.name(), pid = child.id(), "stage started");
        let mut g = self.lock();
        let slot = &mut g.stages[st as usize];
        slot.child = Some(child);
        slot.conn = None;
        slot.ready = false;
        slot.next_start = None;
        slot.hung = None;
        slot.started_at = Some(Instant::now());
        pidfd
    }

    /// Reaps a stage that ended and schedules its restart, or starts one whose restart is due (returning the new
    /// child's pidfd).
    fn check_stage(&self, st: Stage) -> Option<Option<OwnedFd>> {
        let mut g = self.lock();
        let slot = &mut g.stages[st as usize];
        if let Some(at) = slot.next_start {
            if Instant::now() >= at {
                drop(g);
                return Some(self.start(st));
            }
            return None;
        }
        let child = slot.child.as_mut()?;
        let Ok(Some(status)) = child.try_wait() else {
            return None;
        };
        let how = match slot.hung.take() {
            Some(why) => format!("{why}; killed by the supervisor"),
            None if slot.restart_requested => format!("restarted on request ({})", stages::describe_exit(status)),
            None if slot.detached => format!("detached ({})", stages::describe_exit(status)),
            None => stages::describe_exit(status),
        };
        tracing::warn!(stage = st.name(), "stage {how}");
        let was_ready = slot.ready;
        slot.child = None;
        slot.conn = None;
        slot.ready = false;
        slot.last_exit = Some(how.clone());
        self.area().stage(st).pid.store(0, Ordering::Relaxed);
        if slot.detached {
            // The user runs it now; nothing to restart.
            return Some(None);
        }
        if std::mem::take(&mut slot.restart_requested) {
            slot.restarts += 1;
            drop(g);
            return Some(self.start(st));
        }
        let now = Instant::now();
        let window = Duration::from_secs(self.cfg.supervisor.restart_window_s);
        slot.recent.retain(|t| now.duration_since(*t) < window);
        if slot.recent.len() as u32 >= self.cfg.supervisor.max_restarts {
            let n = slot.recent.len() + 1;
            drop(g);
            self.fail(format!(
                "the {} failed {n} times within {} s (last: {how}); stopping the pipeline",
                st.name(),
                self.cfg.supervisor.restart_window_s
            ));
            return Some(None);
        }
        // A stage that had been working is restarted at once; one that keeps dying soon after its start backs
        // off: 10 ms, 20 ms, ... up to 1 s.
        let settled = was_ready && slot.started_at.is_some_and(|t| now.duration_since(t) >= SETTLED);
        slot.quick_deaths = if settled { 0 } else { slot.quick_deaths + 1 };
        let backoff = match slot.quick_deaths {
            0 => Duration::ZERO,
            k => Duration::from_millis((10u64 << (k - 1).min(7)).min(1000)),
        };
        slot.recent.push_back(now);
        slot.restarts += 1;
        slot.next_start = Some(now + backoff);
        if backoff.is_zero() {
            drop(g);
            return Some(self.start(st));
        }
        Some(None)
    }

    /// Stops the stages in pipeline order, each after the one before it has drained into it.
    fn stop_all(&self) {
        if let Some(rec) = self.area().active() {
            rec.stop_requested.store(1, Ordering::Release);
        }
        for st in Stage::ALL {
            let (child, conn) = {
                let mut g = self.lock();
                let slot = &mut g.stages[st as usize];
                slot.next_start = None;
                (slot.child.take(), slot.conn.take())
            };
            let Some(mut child) = child else { continue };
            if let Some(c) = &conn {
                let _ = c.send(&StageCommand::Shutdown);
            } else {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_child(&child),
                    rustix::process::Signal::TERM,
                );
            }
            let t = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(st_)) => {
                        tracing::info!(stage = st.name(), "stage {}", stages::describe_exit(st_));
                        break;
                    }
                    Ok(None) if t.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(5)),
                    _ => {
                        tracing::warn!(stage = st.name(), "stage did not stop in 10 s; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            self.area().stage(st).pid.store(0, Ordering::Relaxed);
        }
    }

    /// Accepts control connections until shutdown; each is served on a thread of its own.
    fn serve(self: Arc<Self>, listener: ControlListener) {
        while !self.shutting_down() {
            // The timeout only paces the shutdown check: a client is accepted the moment it connects.
            match listener.poll_accept(Duration::from_millis(250)) {
                Ok(true) => {}
                _ => continue,
            }
            match listener.accept_any() {
                Ok(conn) => {
                    let sup = self.clone();
                    let span = tracing::Span::current();
                    std::thread::spawn(move || {
                        let _in = span.enter();
                        match conn.check_peer() {
                            Ok(()) => sup.serve_connection(conn),
                            Err(e) => {
                                tracing::warn!(error = %e, "control connection refused");
                                conn.refuse_stranger(&e);
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "control connection refused"),
            }
        }
    }

    fn serve_connection(&self, mut conn: Connection) {
        let _ = conn.set_recv_timeout(Some(Duration::from_secs(10)));
        let role = match conn.recv::<Request>() {
            Ok(r) => match r.msg {
                Request::Hello { protocol, role } if protocol == PROTOCOL_VERSION => role,
                Request::Hello { protocol, .. } => {
                    let _ = conn.send(&Reply::Error {
                        message: format!(
                            "protocol version {protocol} is not supported: this supervisor speaks version {PROTOCOL_VERSION}"
                        ),
                    });
                    return;
                }
                other => {
                    let _ = conn.send(&Reply::Error { message: format!("expected Hello first, got {other:?}") });
                    return;
                }
            },
            Err(e) => {
                let _ = conn.send(&Reply::Error { message: format!("bad first message: {e}") });
                return;
            }
        };
        match role {
            Role::Stage(st) => self.welcome_stage(st, conn),
            Role::Client => {
                if conn.send(&Reply::Welcome { protocol: PROTOCOL_VERSION }).is_err() {
                    return;
                }
                let _ = conn.set_recv_timeout(None);
                self.serve_client(conn);
            }
        }
    }

    fn welcome_stage(&self, st: Stage, conn: Connection) {
        // Only the process the supervisor started for this stage gets the region and the sockets: anything else
        // that says it is a stage (a stray binary, a confused script) would take over its control connection.
        let peer = conn.peer().pid as u32;
        if self.lock().stages[st as usize].detached {
            return self.welcome_manual_stage(st, conn);
        }
        // The watcher records a child just after spawning it; a fast child may say hello first.
        let t = Instant::now();
        let expected = loop {
            let pid = self.lock().stages[st as usize].child.as_ref().map(Child::id);
            if pid == Some(peer) || t.elapsed() > Duration::from_secs(1) {
                break pid;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if expected != Some(peer) {
            let message = match expected {
                Some(pid) => format!("the {} is process {pid}, not {peer}", st.name()),
                None => format!("no {} is being started", st.name()),
            };
            tracing::warn!(stage = st.name(), pid = peer, "refused a stage hello: {message}");
            let _ = conn.send(&Reply::Error { message });
            return;
        }
        let Some(conn) = self.hand_over(st, conn) else { return };
        tracing::info!(stage = st.name(), pid = peer, "stage ready");
        let mut g = self.lock();
        let slot = &mut g.stages[st as usize];
        slot.conn = Some(conn);
        slot.ready = true;
    }

    /// Sends a stage its welcome with the region (and, to the receiver, the sockets) and waits for its Ready; the
    /// connection, if it came.
    fn hand_over(&self, st: Stage, mut conn: Connection) -> Option<Connection> {
        let mut fds: Vec<std::os::fd::BorrowedFd<'_>> = vec![self.region.fd()];
        if st == Stage::Receiver {
            fds.extend(self.sockets.iter().map(|s| s.as_fd()));
        }
        if let Err(e) = conn.send_with_fds(&Reply::Welcome { protocol: PROTOCOL_VERSION }, &fds) {
            tracing::warn!(stage = st.name(), error = %e, "welcome failed");
            return None;
        }
        let _ = conn.set_recv_timeout(Some(Duration::from_secs(30)));
        match conn.recv::<Request>() {
            Ok(r) if r.msg == Request::Ready => {
                let _ = conn.set_recv_timeout(None);
                Some(conn)
            }
            Ok(r) => {
                tracing::warn!(stage = st.name(), msg = ?r.msg, "expected Ready");
                None
            }
            Err(e) => {
                tracing::warn!(stage = st.name(), error = %e, "stage never became ready");
                None
            }
        }
    }

    /// A process the user started by hand for a detached stage.
    fn welcome_manual_stage(&self, st: Stage, conn: Connection) {
        let peer = conn.peer().pid as u32;
        {
            let mut g = self.lock();
            let slot = &mut g.stages[st as usize];
            // A previous hand-run process whose connection is still open holds the stage.
            let alive = slot.conn.as_ref().is_some_and(|c| !c.poll_readable(Duration::ZERO).unwrap_or(true));
            if let (Some(pid), true) = (slot.manual_pid, alive) {
                let message = format!("a hand-run {} (pid {pid}) is attached already", st.name());
                drop(g);
                let _ = conn.send(&Reply::Error { message });
                return;
            }
            slot.manual_pid = Some(peer);
            slot.conn = None;
            slot.ready = false;
        }
        if let Some(conn) = self.hand_over(st, conn) {
            tracing::info!(stage = st.name(), pid = peer, "hand-run stage attached");
            let mut g = self.lock();
            let slot = &mut g.stages[st as usize];
            if slot.detached && slot.manual_pid == Some(peer) {
                slot.conn = Some(conn);
                slot.ready = true;
            }
        }
    }

    /// `ringdaq restart`: the stage finishes what it holds and exits; the watcher starts a new one at once.
    fn restart_stage(&self, st: Stage) -> anyhow::Result<()> {
        let mut g = self.lock();
        let slot = &mut g.stages[st as usize];
        anyhow::ensure!(!slot.detached, "the {} is detached; attach it first", st.name());
        let Some(child) = slot.child.as_ref() else { anyhow::bail!("the {} is not running", st.name()) };
        let pid = child.id();
        slot.restart_requested = true;
        slot.ask_to_stop();
        tracing::info!(stage = st.name(), pid, "restart requested");
        Ok(())
    }

    /// `ringdaq detach`: stops the stage's process for good (until `attach`) and says how to run it by hand.
    fn detach_stage(&self, st: Stage) -> anyhow::Result<String> {
        let command = stages::command_line(st, &self.control_path, &self.cfg)?;
        let mut g = self.lock();
        let slot = &mut g.stages[st as usize];
        anyhow::ensure!(!slot.detached, "the {} is detached already", st.name());
        slot.detached = true;
        slot.next_start = None;
        slot.ask_to_stop();
        tracing::info!(stage = st.name(), "detached: run it by hand with `{command}`");
        Ok(command)
    }

    /// `ringdaq attach`: tells a hand-run process to stop, waits until it is gone, and starts the stage again.
    fn attach_stage(&self, st: Stage) -> anyhow::Result<()> {
        let (conn, pid) = {
            let mut g = self.lock();
            let slot = &mut g.stages[st as usize];
            anyhow::ensure!(slot.detached, "the {} is not detached", st.name());
            anyhow::ensure!(slot.child.is_none(), "the supervisor's {} is still stopping; try again", st.name());
            slot.ready = false;
            (slot.conn.take(), slot.manual_pid.take())
        };
        if let Some(conn) = conn {
            // Two processes must never run one stage: wait for the hand-run one to end its connection (it
            // drains and exits on Shutdown), and kill it if it does not.
            let _ = conn.send(&StageCommand::Shutdown);
            let t = Instant::now();
            while !conn.poll_readable(Duration::from_millis(20)).unwrap_or(true) {
                if t.elapsed() > Duration::from_secs(10) {
                    if let Some(p) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                        tracing::warn!(stage = st.name(), pid = ?pid, "hand-run stage did not stop; killing it");
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                    break;
                }
            }
            if let Some(p) = pid {
                let t = Instant::now();
                while process_alive(p) && t.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let mut g = self.lock();
        let slot = &mut g.stages[st as usize];
        slot.detached = false;
        slot.next_start = Some(Instant::now());
        tracing::info!(stage = st.name(), "attached: the supervisor runs it again");
        Ok(())
    }

    fn serve_client(&self, mut conn: Connection) {
        let mut subscription: Option<Subscriber<'_>> = None;
        loop {
            let req = match conn.recv::<Request>() {
                Ok(r) => r.msg,
                Err(ControlError::Closed) => break,
                Err(e) => {
                    // A malformed request gets an error reply and the connection is closed; nothing else changes.
                    let _ = conn.send(&Reply::Error { message: format!("malformed request: {e}") });
                    break;
                }
            };
            let reply = match req {
                Request::Subscribe { lossless } => {
                    if subscription.is_some() {
                        Reply::Error { message: "this connection is subscribed already".into() }
                    } else {
                        match self.subscribe(lossless) {
                            Ok((sub, reply)) => {
                                let fd = match self.region.read_only_fd() {
                                    Ok(fd) => fd,
                                    Err(e) => {
                                        let _ = conn.send(&Reply::Error { message: format!("{e}") });
                                        sub.end(&self.region);
                                        break;
                                    }
                                };
                                let sent = conn.send_with_fds(&reply, &[fd.as_fd()]);
                                subscription = Some(sub);
                                if sent.is_err() {
                                    break;
                                }
                                continue;
                            }
                            Err(e) => Reply::Error { message: format!("{e:#}") },
                        }
                    }
                }
                // Not answered: a lossless consumer sends one per frame.
                Request::Release { upto } => {
                    if let Some(sub) = subscription.as_mut() {
                        sub.release(upto);
                    }
                    continue;
                }
                Request::MapRegion => match self.region.read_only_fd() {
                    Ok(fd) => {
                        if conn.send_with_fds(&Reply::Region, &[fd.as_fd()]).is_err() {
                            break;
                        }
                        continue;
                    }
                    Err(e) => Reply::Error { message: format!("{e}") },
                },
                other => self.handle(other),
            };
            if conn.send(&reply).is_err() {
                break;
            }
        }
        // The consumer is gone (or misbehaved): its gate, if it held one, must not hold the pipeline back.
        if let Some(sub) = subscription {
            sub.end(&self.region);
        }
    }

    /// Registers an external consumer on the frame ring.
    fn subscribe(&self, lossless: bool) -> anyhow::Result<(Subscriber<'_>, Reply)> {
        use shm_protocol::layout::ConsumerMode;
        anyhow::ensure!(!self.shutting_down(), "the pipeline is shutting down");
        let ring = self.region.ring(FRAME_RING)?;
        let mode = if lossless { ConsumerMode::Gating } else { ConsumerMode::Lossy };
        let index = ring.register_consumer(mode).map_err(|e| {
            anyhow::anyhow!("{e}: at most {} consumers (raise rings.frame_cursors)", ring.max_consumers() - 1)
        })?;
        let (next_seq, _, _) = ring.consumer_state(index)?;
        let gate = if lossless { Some(ring.consumer(index)?) } else { None };
        // A read-only consumer cannot announce that it sleeps: have the assembler always wake the ring. (After
        // attaching the gate, which clears the line's flag.)
        ring.set_wake_always(index, true)?;
        tracing::info!(cursor = index, lossless, next_seq, "consumer subscribed");
        let reply = Reply::Subscribed { cursor: index as u32, next_seq, lossless };
        Ok((Subscriber { index, gate }, reply))
    }

    /// Answers one client request.
    pub fn handle(&self, req: Request) -> Reply {
        match req {
            Request::Status => Reply::Status(Box::new(self.status())),
            Request::Acquire { frames, path, sync } => match self.arm(frames, &path, sync) {
                Ok(id) => Reply::Armed { id },
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Acquisition { id } => match self.acquisition_status(id) {
                Some(s) => Reply::Acquisition(s),
                None => Reply::Error { message: format!("no acquisition {id}") },
            },
            Request::Stop => match self.area().active() {
                Some(rec) => {
                    rec.stop_requested.store(1, Ordering::Release);
                    Reply::Ok
                }
                None => Reply::Error { message: "no acquisition is running".into() },
            },
            Request::Shutdown => {
                self.request_shutdown();
                Reply::Ok
            }
            Request::Restart { stage } => match self.restart_stage(stage) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Detach { stage } => match self.detach_stage(stage) {
                Ok(command) => Reply::Detached { command },
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Attach { stage } => match self.attach_stage(stage) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error { message: format!("{e:#}") },
            },
            Request::Hello { .. }
            | Request::Ready
            | Request::Subscribe { .. }
            | Request::Release { .. }
            | Request::MapRegion => Reply::Error { message: "unexpected message".into() },
        }
    }

    /// Arms an acquisition of `frames` frames into `path`.
    pub fn arm(&self, frames: u64, path: &str, sync: SyncMode) -> anyhow::Result<u64> {
        anyhow::ensure!(frames > 0, "an acquisition needs at least one frame");
        anyhow::ensure!(!self.shutting_down(), "the pipeline is shutting down");
        let p = Path::new(path);
        anyhow::ensure!(p.is_absolute(), "output path {path} must be absolute");
        anyhow::ensure!(
            path.len() <= pipeline::MAX_PATH - 16,
            "output path is longer than {} bytes",
            pipeline::MAX_PATH - 16
        );
        let dir =
            p.parent().filter(|d| d.is_dir()).with_context(|| format!("the directory of {path} does not exist"))?;
        anyhow::ensure!(!p.exists(), "{path} exists; refusing to overwrite it");
        // Leftovers of an earlier run that died with this path armed: a new acquisition starts afresh.
        for suffix in [".partial", ".frames.partial"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
        let _ = dir;
        let area = self.area();
        let mut g = self.lock();
        if let Some(rec) = area.active() {
            let active = rec.id.load(Ordering::Relaxed);
            if rec.state.load(Ordering::Acquire) == acq_state::FAILED {
                // The writer failed it and no frame has told the assembler yet: it is over.
                let _ = area.active_acquisition.compare_exchange(active, 0, Ordering::AcqRel, Ordering::Relaxed);
            } else {
                anyhow::bail!("acquisition {active} is still running; stop it first");
            }
        }
        let id = g.next_acquisition;
        let rec = area.acquisition(id);
        let st = rec.state.load(Ordering::Acquire);
        anyhow::ensure!(
            matches!(st, acq_state::EMPTY | acq_state::DONE | acq_state::FAILED),
            "acquisition {} is still being written; try again when it is done",
            rec.id.load(Ordering::Relaxed)
        );
        g.next_acquisition += 1;
        let armed_at = self.region.ring(BLOCK_RING).map(|r| r.published()).unwrap_or(0);
        let sync = match sync {
            SyncMode::Immediate => sync_mode::IMMEDIATE,
            SyncMode::Flag => sync_mode::FLAG,
        };
        // SAFETY: we are the supervisor and the record's previous acquisition is finished (checked above).
        unsafe { rec.arm(id, frames, sync, path, armed_at) };
        area.active_acquisition.store(id, Ordering::Release);
        shm_protocol::logging::set_acquisition(id);
        tracing::info!(frames, path, "acquisition armed");
        Ok(id)
    }

    /// The state of acquisition `id`, if its record still holds it.
    pub fn acquisition_status(&self, id: u64) -> Option<AcquisitionStatus> {
        let rec = self.area().acquisition(id);
        if rec.id.load(Ordering::Acquire) != id {
            return None;
        }
        let st = rec.state.load(Ordering::Acquire);
        Some(AcquisitionStatus {
            id,
            path: rec.path(),
            state: match st {
                acq_state::ARMED => "armed",
                acq_state::RUNNING => "running",
                acq_state::ASSIGNED => "writing",
                acq_state::DONE => "done",
                acq_state::FAILED => "failed",
                _ => "unknown",
            }
            .into(),
            frames: rec.frames.load(Ordering::Relaxed),
            assigned: rec.assigned.load(Ordering::Relaxed),
            written: rec.written.load(Ordering::Relaxed),
            complete: rec.complete.load(Ordering::Relaxed),
            error: (st == acq_state::FAILED).then(|| rec.error()),
        })
    }

    /// The pipeline's state.
    pub fn status(&self) -> StatusReport {
        let area = self.area();
        let g = self.lock();
        let stages = Stage::ALL
            .iter()
            .map(|&st| {
                let s = &g.stages[st as usize];
                StageStatus {
                    name: st.name().into(),
                    state: if s.detached {
                        let hand_run = s.ready
                            && s.conn.as_ref().is_some_and(|c| !c.poll_readable(Duration::ZERO).unwrap_or(true));
                        if hand_run { "detached (run by hand)" } else { "detached" }
                    } else if s.ready {
                        "running"
                    } else if s.child.is_some() {
                        "starting"
                    } else if s.next_start.is_some() {
                        "restarting"
                    } else {
                        "stopped"
                    }
                    .into(),
                    pid: s.child.as_ref().map(Child::id).or(s.manual_pid.filter(|_| s.ready)).unwrap_or(0),
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                    uptime_s: s.started_at.filter(|_| s.child.is_some()).map_or(0, |t| t.elapsed().as_secs()),
                }
            })
            .collect();
        let next_id = g.next_acquisition;
        drop(g);
        let used = |ring: usize| {
            self.region.ring(ring).ok().map_or(0, |r| {
                let p = r.published();
                r.min_gating_cursor().map_or(0, |c| p.saturating_sub(c))
            })
        };
        let acquisitions = (next_id.saturating_sub(pipeline::ACQUISITION_SLOTS as u64).max(1)..next_id)
            .filter_map(|id| self.acquisition_status(id))
            .collect();
        StatusReport {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            mode: self.cfg.mode.to_string(),
            stages,
            counters: area.counters().into_iter().collect(),
            rates: self.rates.lock().unwrap_or_else(|p| p.into_inner()).current.clone(),
            block_ring_slots: self.region.ring(BLOCK_RING).map_or(0, |r| r.slot_count()),
            frame_ring_slots: self.region.ring(FRAME_RING).map_or(0, |r| r.slot_count()),
            block_ring_used: used(BLOCK_RING),
            frame_ring_used: used(FRAME_RING),
            acquisitions,
        }
    }
}

/// Whether process `pid` exists and has not ended (a zombie has).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Refuses a region that cannot fit in memory, with a clear message, before anything is allocated.
fn check_memory(bytes: u64) -> anyhow::Result<()> {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail_kb = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(kb) = avail_kb {
        anyhow::ensure!(
            bytes < kb * 1024 / 10 * 9,
            "the rings need {} MB of shared memory but only {} MB are available; reduce rings.block_slots or \
             rings.frame_slots",
            bytes >> 20,
            kb >> 10
        );
    }
    Ok(())
}
