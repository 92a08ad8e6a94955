//! Taking over a running pipeline whose supervisor died: the lock that keeps two supervisors off one pipeline,
//! the record of what runs (`pipeline.json`), and the adoption itself.
//!
//! A supervisor holds `supervisor.lock` (flock) in the runtime directory for its whole life and records its
//! pid, its configuration and its stages' pids in `pipeline.json`. A new `ringdaq run` that gets the lock while
//! that file is there knows its predecessor died without cleaning up; stages of it that still run (found by pid,
//! checked by their command line, held by a pidfd from then on) rejoin on the control socket and hand back the
//! region's memfd and the detector's sockets with SCM_RIGHTS; the new supervisor checks that they are the ones its
//! configuration describes, and carries on with them. Under systemd the same descriptors wait in its fd store.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use shm_protocol::control::{Connection, ControlListener};
use shm_protocol::messages::{PROTOCOL_VERSION, Reply, Request};
use shm_protocol::pipeline::{PipelineSizes, Stage};
use shm_protocol::{Access, Region};

use crate::config::Config;
use crate::stage_process::StageProcess;

/// The lock file: held (flock, exclusive) by the supervisor of the runtime directory while it lives.
pub const LOCK_FILE: &str = "supervisor.lock";

/// What a supervisor records of the pipeline it runs, for a successor.
pub const PIPELINE_FILE: &str = "pipeline.json";

/// How long a new supervisor waits for the surviving stages to rejoin. They try every 20 ms; a stage busy in one
/// long step (a writer syncing a large file) answers at its next turn, well within this.
const REJOIN_WAIT: Duration = Duration::from_secs(5);

/// How long a new supervisor waits for its dead predecessor's process to be gone entirely (the lock is released
/// as it exits, a moment before it is).
const PREDECESSOR_WAIT: Duration = Duration::from_secs(2);

/// The runtime directory's lock, held while the supervisor lives (the kernel drops it when the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock of `runtime`, or refuses, naming the supervisor that holds it.
    pub fn take(runtime: &Path) -> anyhow::Result<Self> {
        use rustix::fs::{FlockOperation, flock};
        let path = runtime.join(LOCK_FILE);
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
                let holder = std::fs::read_to_string(runtime.join(crate::inspect_cmd::PID_FILE)).unwrap_or_default();
                let holder = holder.trim();
                bail!(
                    "another ringdaq supervisor{} runs this pipeline (runtime directory {}); two never drive one \
                     pipeline: stop it first (`ringdaq shutdown`), or use another --runtime-dir",
                    if holder.is_empty() { String::new() } else { format!(" (pid {holder})") },
                    runtime.display()
                );
            }
            // The lock is on the file we opened; a supervisor that exited cleanly removes the file: then ours may
            // be an unlinked one that guards nothing. Only a lock on the file at the path counts.
            let ours = rustix::fs::fstat(&file)?;
            match rustix::fs::stat(&path) {
                Ok(now) if now.st_ino == ours.st_ino && now.st_dev == ours.st_dev => {
                    return Ok(Self { _file: file, path });
                }
                _ => continue,
            }
        }
    }

    /// Removes the lock file at a clean exit (still holding the lock, so nobody takes a lock on it meanwhile).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The contents of [`PIPELINE_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineFile {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// [`shm_protocol::layout::LAYOUT_VERSION`] of its region.
    pub layout_version: u32,
    /// The protocol its stages speak.
    pub protocol_version: u32,
    /// Its configuration (see [`config_value`]).
    pub config: serde_json::Value,
    /// The pid of each stage's process (0: none), in pipeline order.
    pub stages: [u32; 3],
}

/// The configuration as it is compared between a supervisor and its successor: everything but what only the
/// supervisor itself uses (the metrics address).
pub fn config_value(cfg: &Config) -> serde_json::Value {
    let mut c = cfg.clone();
    c.metrics = None;
    serde_json::to_value(&c).unwrap_or(serde_json::Value::Null)
}

/// Writes [`PIPELINE_FILE`] (replacing it atomically).
pub fn write_pipeline_file(runtime: &Path, file: &PipelineFile) {
    let path = runtime.join(PIPELINE_FILE);
    let tmp = runtime.join(format!("{PIPELINE_FILE}.tmp"));
    let r = serde_json::to_vec_pretty(file)
        .map_err(std::io::Error::other)
        .and_then(|text| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = r {
        tracing::warn!(error = %e, "writing {}", path.display());
    }
}

/// Removes [`PIPELINE_FILE`] (at a clean exit: nothing is left to adopt).
pub fn remove_pipeline_file(runtime: &Path) {
    let _ = std::fs::remove_file(runtime.join(PIPELINE_FILE));
}

/// A pipeline whose supervisor died, as found in the runtime directory.
#[derive(Debug)]
pub struct Found {
    /// Its surviving stage processes.
    pub stages: [Option<StageProcess>; 3],
    /// Descriptors systemd kept for it (region, then sockets), if any.
    pub stored: Option<(OwnedFd, Vec<OwnedFd>)>,
}

/// Looks for a pipeline left running in `runtime` by a supervisor that died (the caller holds the lock, so no
/// supervisor runs it). `None`: nothing to adopt, start afresh. An error: one runs, but not as `cfg` describes
/// it (the message says what differs and what to do).
pub fn find(runtime: &Path, cfg: &Config) -> anyhow::Result<Option<Found>> {
    // The pipeline's sockets: the detector's, or those of its sectors this pipeline takes (`--sectors`).
    let stored = systemd_descriptors(cfg.view()?.subset().iter().count());
    let path = runtime.join(PIPELINE_FILE);
    let file: Option<PipelineFile> = match std::fs::read(&path) {
        Ok(text) => match serde_json::from_slice(&text) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "{} is unreadable; starting afresh", path.display());
                None
            }
        },
        Err(_) => None,
    };
    let Some(file) = file else {
        return Ok(stored.map(|stored| Found { stages: Default::default(), stored: Some(stored) }));
    };
    wait_gone(file.supervisor_pid);
    let control = crate::config::control_socket(runtime);
    let mut stages: [Option<StageProcess>; 3] = Default::default();
    for st in Stage::ALL {
        stages[st as usize] = adopt_stage(file.stages[st as usize], st, &control);
    }
    if stages.iter().all(Option::is_none) && stored.is_none() {
        tracing::info!(
            pid = file.supervisor_pid,
            "the previous supervisor died and none of its stages runs; starting afresh"
        );
        remove_pipeline_file(runtime);
        return Ok(None);
    }
    let pids: Vec<String> = stages.iter().flatten().map(|p| p.id().to_string()).collect();
    let how_to_end = format!(
        "its stages (pids {}) end by themselves after orphan_timeout_s ({} s), or kill them",
        pids.join(", "),
        cfg.supervisor.orphan_timeout_s
    );
    if file.layout_version != shm_protocol::layout::LAYOUT_VERSION || file.protocol_version != PROTOCOL_VERSION {
        bail!(
            "the pipeline left running in {} is of another ringdaq version (region layout {}, protocol {}; this is \
             layout {}, protocol {}); {how_to_end}",
            runtime.display(),
            file.layout_version,
            file.protocol_version,
            shm_protocol::layout::LAYOUT_VERSION,
            PROTOCOL_VERSION
        );
    }
    let ours = config_value(cfg);
    if file.config != ours {
        let differ: Vec<String> = match (&file.config, &ours) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| k.to_string()).collect()
            }
            _ => vec!["(all)".into()],
        };
        bail!(
            "the pipeline left running in {} by a supervisor that died has another configuration (differs in: {}); \
             start `ringdaq run` with the configuration it was started with to take it over, or let it end: \
             {how_to_end}",
            runtime.display(),
            differ.join(", ")
        );
    }
    Ok(Some(Found { stages, stored }))
}

/// Waits (at most [`PREDECESSOR_WAIT`]) until the process `pid` of the dead supervisor is gone, by its pidfd.
fn wait_gone(pid: u32) {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else { return };
    let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else { return };
    if !crate::stage_process::ended(fd.as_fd(), PREDECESSOR_WAIT) {
        // We hold the lock, so it is not a supervisor of this directory: the pid was reused.
        tracing::debug!(pid, "the previous supervisor's pid runs another process");
    }
}

/// Process `pid` (0: none), adopted as stage `st` if it is that stage of the control socket `control`; None
/// otherwise, or if it cannot be watched (logged).
fn adopt_stage(pid: u32, st: Stage, control: &Path) -> Option<StageProcess> {
    if pid == 0 || !is_stage(pid, st, control) {
        return None;
    }
    StageProcess::adopt(pid)
        .inspect_err(|e| tracing::warn!(stage = st.name(), pid, error = %e, "cannot watch the surviving stage"))
        .ok()
}

/// Whether process `pid` is a `ringdaq-<stage>` of the control socket `control` (not a reused pid).
fn is_stage(pid: u32, st: Stage, control: &Path) -> bool {
    if !shm_protocol::session::process_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let name = format!("ringdaq-{}", st.name());
    let is_binary = args.first().is_some_and(|a| a.ends_with(name.as_bytes()));
    let ctl = control.as_os_str().as_encoded_bytes();
    is_binary && args.windows(2).any(|w| w[0] == b"--control" && w[1] == ctl)
}

/// The descriptors systemd kept in its fd store for this service (`LISTEN_FDS`, named `region` and `sector<N>`),
/// if it passed them to this process.
fn systemd_descriptors(streams: usize) -> Option<(OwnedFd, Vec<OwnedFd>)> {
    let fds = sd_notify::listen_fds_with_names().ok()?;
    let mut region = None;
    let mut sockets: Vec<Option<OwnedFd>> = (0..streams).map(|_| None).collect();
    for (raw, name) in fds {
        // SAFETY: systemd passed `raw` to this process (LISTEN_PID is ours, checked by `listen_fds_with_names`)
        // and nothing else in it owns the descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        if name == "region" {
            region = Some(fd);
        } else if let Some(i) = name.strip_prefix("sector").and_then(|n| n.parse::<usize>().ok())
            && i < streams
        {
            sockets[i] = Some(fd);
        }
    }
    let region = region?;
    let sockets: Option<Vec<OwnedFd>> = sockets.into_iter().collect();
    tracing::info!("the region and sockets come from systemd's fd store");
    Some((region, sockets.unwrap_or_default()))
}

/// Hands the region's memfd and the sockets to systemd's fd store (under systemd: `$NOTIFY_SOCKET`), named
/// `region` and `sector<N>`, so that they outlive every process of the service.
pub fn store_in_systemd(region: &Region, sockets: &[OwnedFd]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut all = vec![("region".to_string(), region.fd())];
    all.extend(sockets.iter().enumerate().map(|(i, s)| (format!("sector{i}"), s.as_fd())));
    for (name, fd) in all {
        if let Err(e) = notify_systemd(&format!("FDSTORE=1\nFDNAME={name}\n"), &[fd]) {
            tracing::warn!(error = %e, name, "storing a descriptor in systemd's fd store");
        }
    }
}

/// Takes the pipeline's descriptors out of systemd's fd store (at a clean exit: a restart starts afresh).
pub fn unstore_in_systemd(streams: usize) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let names = std::iter::once("region".to_string()).chain((0..streams).map(|i| format!("sector{i}")));
    for name in names {
        let _ = notify_systemd(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[]);
    }
}

/// Sends `state` with `fds` (SCM_RIGHTS) to systemd's notify socket, `$NOTIFY_SOCKET` (a path, or an abstract
/// name after `@`). (The `sd-notify` crate sends descriptors only with a feature that needs one more crate.)
pub fn notify_systemd(state: &str, fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};
    use std::mem::MaybeUninit;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let bytes = target.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddrUnix::new_abstract_name(name)?,
        None => SocketAddrUnix::new(Path::new(&target))?,
    };
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors for one notification"));
    }
    rustix::net::sendmsg_addr(
        &sock,
        &addr,
        &[std::io::IoSlice::new(state.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Takes the descriptors of the pipeline back: from systemd's fd store if it kept them, else from the first
/// surviving stage that rejoins; every stage that rejoins within [`REJOIN_WAIT`] comes back with its
/// connection (answered once the caller has taken it over). Checks that the region and sockets are the ones
/// `cfg` describes.
pub fn take_back(
    listener: &ControlListener,
    found: &mut Found,
    cfg: &Config,
    sizes: &PipelineSizes,
) -> anyhow::Result<Taken> {
    let mut region_fd: Option<OwnedFd> = None;
    let mut sockets: Vec<OwnedFd> = Vec::new();
    if let Some((r, s)) = found.stored.take() {
        region_fd = Some(r);
        sockets = s;
    }
    // Socket i listens on the port of the i-th sector this pipeline takes (all of them, or `--sectors`).
    let ports: Vec<u16> = cfg.view()?.subset().iter().map(|s| cfg.port_base + s as u16).collect();
    let streams = ports.len();
    let control = crate::config::control_socket(&cfg.runtime_dir());
    let mut rejoined: Vec<(Stage, Connection)> = Vec::new();
    let t = Instant::now();
    let waiting = |found: &Found, rejoined: &Vec<(Stage, Connection)>| {
        found.stages.iter().filter(|p| p.is_some()).count() > rejoined.len()
    };
    while waiting(found, &rejoined) && t.elapsed() < REJOIN_WAIT {
        if !listener.poll_accept(REJOIN_WAIT.saturating_sub(t.elapsed()))? {
            continue;
        }
        let Ok(mut conn) = listener.accept_any() else { continue };
        if conn.check_peer().is_err() {
            continue;
        }
        let _ = conn.set_recv_timeout(Some(Duration::from_secs(1)));
        let Ok(got) = conn.recv::<Request>() else { continue };
        let peer = conn.peer().pid as u32;
        let Request::Rejoin { protocol, stage } = got.msg else {
            // A client early: it retries once the supervisor serves.
            continue;
        };
        let expected = found.stages[stage as usize].as_ref().map(StageProcess::id);
        if expected.is_none() && protocol == PROTOCOL_VERSION {
            // Started by the dead supervisor in the instant before it recorded the pid: still the stage's.
            found.stages[stage as usize] = adopt_stage(peer, stage, &control);
        }
        let expected = found.stages[stage as usize].as_ref().map(StageProcess::id);
        if protocol != PROTOCOL_VERSION || expected != Some(peer) {
            let _ = conn.send(&Reply::Error {
                message: format!("process {peer} is not the surviving {} this supervisor adopts", stage.name()),
            });
            continue;
        }
        let mut fds = got.fds.into_iter();
        if region_fd.is_none() {
            region_fd = fds.next();
        } else {
            fds.next();
        }
        let rest: Vec<OwnedFd> = fds.collect();
        if sockets.len() != streams && rest.len() == streams {
            sockets = rest;
        }
        tracing::info!(stage = stage.name(), pid = peer, "surviving stage rejoined");
        rejoined.push((stage, conn));
    }
    let fd = region_fd.context(
        "no surviving stage handed back the pipeline's region in time; they end by themselves after \
         orphan_timeout_s",
    )?;
    let region = Region::attach(fd, Access::ReadWrite).context("the surviving pipeline's region")?;
    let expected = shm_protocol::layout::compute_layout(&sizes.region_spec())?;
    anyhow::ensure!(
        *region.header() == expected,
        "the surviving pipeline's region is not laid out as this configuration's (rings, geometry); refusing it"
    );
    // A stage the dead supervisor started in the instant before it recorded the pid, which has not rejoined yet,
    // recorded itself in the region: it is adopted too (it rejoins as soon as the control socket serves), so that
    // the watcher does not start a second process for it.
    if let Ok(area) = shm_protocol::pipeline::pipeline_area(&region) {
        for st in Stage::ALL {
            if found.stages[st as usize].is_none() {
                let pid = area.stage(st).pid.load(std::sync::atomic::Ordering::Acquire);
                found.stages[st as usize] = adopt_stage(pid, st, &control);
            }
        }
    }
    if sockets.len() == streams {
        for (s, fd) in sockets.iter().enumerate() {
            let port = rustix::net::getsockname(fd)
                .ok()
                .and_then(|a| std::net::SocketAddr::try_from(a).ok())
                .map(|a| a.port());
            anyhow::ensure!(
                port == Some(ports[s]),
                "the surviving pipeline's socket {s} is on port {port:?}, not {}",
                ports[s]
            );
        }
    } else {
        // Nobody kept them (the stages that held them died): bound anew; what was queued in them is lost.
        tracing::warn!("no surviving stage handed back the detector's sockets; binding them anew");
        sockets = crate::sockets::bind_sector_sockets(cfg)?;
    }
    Ok(Taken { region, sockets, rejoined })
}

/// What [`take_back`] took.
#[derive(Debug)]
pub struct Taken {
    /// The pipeline's region.
    pub region: Region,
    /// The detector's sockets.
    pub sockets: Vec<OwnedFd>,
    /// The stages that rejoined, with their connections (each waits for its `Welcome`).
    pub rejoined: Vec<(Stage, Connection)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringdaq-adopt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_gone() {
        let d = temp_dir("lock");
        std::fs::write(d.join(crate::inspect_cmd::PID_FILE), "4242\n").expect("pid file");
        let first = Lock::take(&d).expect("the first lock");
        let e = Lock::take(&d).expect_err("a second one is refused").to_string();
        assert!(e.contains("another ringdaq supervisor (pid 4242) runs this pipeline"), "{e}");
        // A clean exit removes the file while holding the lock; the next supervisor locks a new one.
        first.remove();
        drop(first);
        let again = Lock::take(&d).expect("a lock once the first is gone");
        assert!(d.join(LOCK_FILE).exists());
        drop(again);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_configuration_compared_leaves_out_the_metrics_address() {
        let a = Config::default();
        let mut b = a.clone();
        b.metrics = Some("127.0.0.1:9464".parse().expect("addr"));
        assert_eq!(config_value(&a), config_value(&b));
        b.rings.frame_slots += 1;
        assert_ne!(config_value(&a), config_value(&b));
    }

    #[test]
    fn without_a_pipeline_file_there_is_nothing_to_adopt() {
        let d = temp_dir("find");
        let cfg = Config { runtime_dir: Some(d.clone()), ..Config::default() };
        assert!(find(&d, &cfg).expect("find").is_none());
        // A file whose supervisor and stages are all gone: nothing to adopt either, and the file goes.
        let file = PipelineFile {
            supervisor_pid: u32::MAX / 2,
            layout_version: shm_protocol::layout::LAYOUT_VERSION,
            protocol_version: PROTOCOL_VERSION,
            config: config_value(&cfg),
            stages: [u32::MAX / 2; 3],
        };
        write_pipeline_file(&d, &file);
        assert!(find(&d, &cfg).expect("find").is_none());
        assert!(!d.join(PIPELINE_FILE).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
