//! The stage processes: where their binaries are, how they are started, how their ends are described.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use anyhow::Context;
use shm_protocol::pipeline::Stage;

use crate::config::Config;

/// The binary of a stage: `ringdaq-<stage>` next to the running `ringdaq` (or in `$RINGDAQ_STAGE_DIR`).
pub fn binary(stage: Stage) -> anyhow::Result<PathBuf> {
    let name = format!("ringdaq-{}", stage.name());
    let dir = match std::env::var_os("RINGDAQ_STAGE_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .context("locating the ringdaq binary")?
            .parent()
            .map(Path::to_path_buf)
            .context("the ringdaq binary has no directory")?,
    };
    let p = dir.join(&name);
    anyhow::ensure!(p.exists(), "stage binary {} not found (build the workspace: cargo build --release)", p.display());
    Ok(p)
}

/// Starts `stage`, telling it where the control socket is. The stage outlives this process if it dies: it
/// keeps moving data and waits `supervisor.orphan_timeout_s` for a successor to adopt it (see `crate::adopt`).
pub fn spawn(stage: Stage, control: &Path, cfg: &Config) -> anyhow::Result<Child> {
    command(stage, control, cfg)?.spawn().with_context(|| format!("starting the {}", stage.name()))
}

/// The command line of `stage`, as the supervisor runs it (and as a user runs it by hand after `detach`).
pub fn command_line(stage: Stage, control: &Path, cfg: &Config) -> anyhow::Result<String> {
    let cmd = command(stage, control, cfg)?;
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&a.to_string_lossy());
    }
    Ok(line)
}

/// Whether this process logs JSON; the stages it starts are told to do the same.
pub static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process's split log (`ringdaq run` on a terminal), passed on to the stages it starts: their full logs
/// go to the same file, their warnings and errors to the same terminal.
pub static LOG_SPLIT: std::sync::OnceLock<shm_protocol::logging::Split> = std::sync::OnceLock::new();

fn command(stage: Stage, control: &Path, cfg: &Config) -> anyhow::Result<Command> {
    let mut cmd = Command::new(binary(stage)?);
    if LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        cmd.env(shm_protocol::logging::FORMAT_ENV, "json");
    }
    if let Some(split) = LOG_SPLIT.get() {
        cmd.env(shm_protocol::logging::FILE_ENV, &split.file);
        cmd.env(shm_protocol::logging::TERMINAL_LEVEL_ENV, split.terminal.as_str());
    }
    cmd.arg("--control").arg(control);
    cmd.arg("--orphan-timeout-s").arg(cfg.supervisor.orphan_timeout_s.to_string());
    match stage {
        Stage::Receiver => {}
        Stage::Assembler => {
            cmd.arg("--window").arg(cfg.assembler.window.to_string());
            cmd.arg("--timeout-ms").arg(cfg.assembler.timeout_ms.to_string());
            cmd.arg("--reset-threshold").arg(cfg.assembler.reset_threshold.to_string());
            let idle_ms = (cfg.assembler.stream_idle_timeout_s.max(0.0) * 1000.0).round() as u64;
            cmd.arg("--stream-idle-ms").arg(idle_ms.to_string());
        }
        Stage::Writer => {
            if !cfg.writer.direct_io {
                cmd.arg("--buffered");
            }
        }
    }
    Ok(cmd)
}

/// How a process ended, in words.
pub fn describe_exit(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = st.code() {
        return format!("exited with code {code}");
    }
    match st.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        None => "ended".into(),
    }
}
