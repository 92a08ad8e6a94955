//! The running supervisor: owns the region and the sockets, runs and watches the stages, serves clients.
//!
//! One [`Supervisor`], its work split by job: `watch` starts, restarts and stops the stages and kills hung
//! ones; `serve` accepts connections, welcomes stages and answers clients; `operate` holds the debugging
//! commands (restart, detach, attach); `acquisitions` arms them and reports on them; `status` reports the
//! pipeline.

mod acquisitions;
mod operate;
mod serve;
mod status;
mod watch;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use shm_protocol::Region;
use shm_protocol::control::{Connection, ControlListener};
use shm_protocol::messages::{PROTOCOL_VERSION, Reply};
use shm_protocol::pipeline::{self, PipelineArea, PipelineSizes, Stage};

use crate::adopt;
use crate::config::{self, Config};
use crate::geometry::{region_placement, view_geometry};
use crate::restart_policy::History;
use crate::stage_process::StageProcess;
use crate::stage_state::StageState;
use status::Rates;

/// What the supervisor knows about one stage: its state, and what outlives its processes.
#[derive(Debug)]
struct StageSlot {
    state: StageState,
    /// Restarts so far (requested ones included), as `status` reports them.
    restarts: u32,
    /// How its last process ended, in words.
    last_exit: Option<String>,
    /// What the restart policy remembers of its deaths.
    history: History,
}

impl StageSlot {
    fn new(stage: Stage) -> Self {
        Self { state: StageState::new(stage), restarts: 0, last_exit: None, history: History::default() }
    }
}

#[derive(Debug)]
struct State {
    stages: [StageSlot; 3],
    next_acquisition: u64,
    /// Frame-ring consumer lines of subscribers of a supervisor that died, held for them since when (see
    /// [`SUBSCRIPTION_HOLD`]).
    held_subscriptions: Vec<(usize, Instant)>,
}

/// How long an adopted pipeline holds a subscriber's consumer line (and, lossless, its gate) for it to come
/// back (`Request::Resubscribe`): a consumer retries every 20 ms, so it is back within milliseconds of the new
/// supervisor if it still runs; one that does not come back holds the pipeline no longer than this.
const SUBSCRIPTION_HOLD: Duration = Duration::from_secs(10);

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
    /// Client connections waiting for an acquisition to end (`acquire --wait`): answered before the supervisor
    /// exits.
    waiters: AtomicUsize,
    /// The runtime directory's lock (see `crate::adopt`), held for this process's life.
    lock: adopt::Lock,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("control", &self.control_path).finish_non_exhaustive()
    }
}

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
        let view = cfg.view()?;
        // Two supervisors never drive one pipeline: the lock is held until this process ends.
        let lock = adopt::Lock::take(&runtime)?;
        let sizes = PipelineSizes {
            geometry: view_geometry(&view),
            block_slots: cfg.rings.block_slots,
            datagrams_per_slot: cfg.rings.datagrams_per_slot,
            frame_slots: cfg.rings.frame_slots,
            frame_cursors: cfg.rings.frame_cursors,
            fill_value: cfg.rings.fill_value,
            invalid_reasons: cfg.mode.invalid_reasons(),
            placement: region_placement(&view)?,
        };
        let bytes = sizes.region_spec();
        let total = shm_protocol::layout::compute_layout(&bytes)?.region_size;
        let found = adopt::find(&runtime, &cfg)?;
        let control_path = config::control_socket(&runtime);
        let bind = || {
            ControlListener::bind(&control_path).with_context(|| {
                format!("control socket {} (is another ringdaq running there?)", control_path.display())
            })
        };
        let (region, sockets, listener, adopted) = match found {
            None => {
                check_memory(total)?;
                let region = sizes.create_region().context("creating the shared region")?;
                let sockets = crate::sockets::bind_sector_sockets(&cfg)?;
                adopt::store_in_systemd(&region, &sockets);
                (region, sockets, bind()?, None)
            }
            Some(mut found) => {
                let listener = bind()?;
                let from_systemd = found.stored.is_some();
                let taken = adopt::take_back(&listener, &mut found, &cfg, &sizes)?;
                if !from_systemd {
                    adopt::store_in_systemd(&taken.region, &taken.sockets);
                }
                (taken.region, taken.sockets, listener, Some((found.stages, taken.rejoined)))
            }
        };
        // For `ringdaq inspect` when this process no longer answers.
        let pid_file = runtime.join(crate::inspect_cmd::PID_FILE);
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pid_file.display()))?;
        tracing::info!(
            region_mb = total / (1 << 20),
            control = %control_path.display(),
            mode = %view,
            ports = ports(&cfg, &view),
            "{}",
            if adopted.is_some() { "pipeline adopted" } else { "pipeline created" }
        );
        let sup = Arc::new(Self {
            cfg,
            region,
            sockets,
            control_path,
            state: Mutex::new(State {
                stages: Stage::ALL.map(StageSlot::new),
                next_acquisition: 1,
                held_subscriptions: Vec::new(),
            }),
            shutdown: AtomicBool::new(false),
            failure: Mutex::new(None),
            started: Instant::now(),
            rates: Mutex::new(Rates::default()),
            waiters: AtomicUsize::new(0),
            lock,
        });
        if let Some((stages, rejoined)) = adopted {
            sup.take_over(stages, rejoined);
        }
        sup.record_pipeline();
        Ok((sup, listener))
    }

    /// Carries on with a pipeline adopted from a supervisor that died: its surviving stages (those that rejoined
    /// run again at once, the others are expected), its acquisitions (their records are in the region: ids go on
    /// from the highest), and its subscribers' consumer lines, held for them a while (see
    /// [`SUBSCRIPTION_HOLD`]). Stages that did not survive are started by the watcher.
    fn take_over(&self, stages: [Option<StageProcess>; 3], rejoined: Vec<(Stage, Connection)>) {
        let area = self.area();
        let now = Instant::now();
        let mut g = self.lock();
        for (st, proc) in Stage::ALL.into_iter().zip(stages) {
            if let Some(proc) = proc {
                let pid = proc.id();
                let _ = g.stages[st as usize].state.started(proc, now);
                tracing::info!(stage = st.name(), pid, "stage adopted");
            }
        }
        for (st, conn) in rejoined {
            let pid = conn.peer().pid as u32;
            let state = &mut g.stages[st as usize].state;
            if state.admit(pid).is_ok() && conn.send(&Reply::Welcome { protocol: PROTOCOL_VERSION }).is_ok() {
                let _ = state.ready(pid, conn);
            }
        }
        let last = area.acquisitions.iter().map(|r| r.id.load(Ordering::Acquire)).max().unwrap_or(0);
        g.next_acquisition = last + 1;
        if let Some(rec) = area.active() {
            let id = rec.id.load(Ordering::Acquire);
            shm_protocol::logging::set_acquisition(id);
            tracing::info!(acquisition = id, state = %rec.state(), "carrying on with the running acquisition");
        }
        if let Ok(ring) = self.region.ring(pipeline::FRAME_RING) {
            for i in pipeline::subscriber_lines(&ring) {
                tracing::info!(cursor = i, "holding a subscriber's consumer line for it");
                g.held_subscriptions.push((i, now));
            }
        }
    }

    /// Records this supervisor's pid, configuration and stage pids in the runtime directory, for a successor.
    fn record_pipeline(&self) {
        let stages = {
            let g = self.lock();
            Stage::ALL.map(|st| g.stages[st as usize].state.pid())
        };
        let file = adopt::PipelineFile {
            supervisor_pid: std::process::id(),
            layout_version: shm_protocol::layout::LAYOUT_VERSION,
            protocol_version: PROTOCOL_VERSION,
            config: adopt::config_value(&self.cfg),
            stages,
        };
        adopt::write_pipeline_file(&self.cfg.runtime_dir(), &file);
    }

    /// At a clean exit: removes what this supervisor kept in the runtime directory (nothing is left to adopt),
    /// and takes the descriptors out of systemd's fd store.
    pub fn remove_runtime_files(&self) {
        let runtime = self.cfg.runtime_dir();
        adopt::remove_pipeline_file(&runtime);
        let _ = std::fs::remove_file(runtime.join(crate::inspect_cmd::PID_FILE));
        adopt::unstore_in_systemd(self.sockets.len());
        self.lock.remove();
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
        // The running acquisition is cut short: it says why (its file is finished at the stop, see `stop_all`).
        if let Some(rec) = self.area().active() {
            rec.claim_end(pipeline::EndReason::PipelineFailed, &format!("the pipeline stopped: {why}"));
        }
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.request_shutdown();
    }

    /// Whether all three stages have attached and reported ready.
    pub fn ready(&self) -> bool {
        self.lock().stages.iter().all(|s| s.state.is_ready())
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
            // Stages are started, restarted and stopped from this one thread (it holds their pidfds).
            let span = tracing::Span::current();
            let watcher = s.spawn(move || span.in_scope(|| sup.watch(stop_flag)));
            if watcher.join().is_err() {
                self.fail("the stage watcher panicked; stopping".into());
            }
            // However the watcher ended, the server must end too.
            self.request_shutdown();
        });
        self.answer_waiters();
        Ok(())
    }

    /// Gives clients waiting for an acquisition (`acquire --wait`, polling every 100 ms) the time to read its
    /// final state before the process exits and their connections close: until none waits, at most 2 s.
    fn answer_waiters(&self) {
        let t = Instant::now();
        while self.waiters.load(Ordering::Acquire) > 0 && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The ports the pipeline binds, for the log: `127.0.0.1:2001-2008`, or a part's `127.0.0.1:2005-2008` or
/// `127.0.0.1:2001,2003`.
fn ports(cfg: &Config, view: &detector::View) -> String {
    let base = usize::from(cfg.port_base);
    let list: Vec<usize> = view.subset().iter().map(|s| base + s).collect();
    let contiguous = list.windows(2).all(|w| w[1] == w[0] + 1);
    match (list.first(), list.last()) {
        (Some(a), Some(b)) if contiguous => format!("{}:{a}-{b}", cfg.bind),
        _ => format!("{}:{}", cfg.bind, list.iter().map(usize::to_string).collect::<Vec<_>>().join(",")),
    }
}

/// Whether process `pid` exists and has not ended (a zombie has).
pub fn process_alive(pid: u32) -> bool {
    shm_protocol::session::process_alive(pid)
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
