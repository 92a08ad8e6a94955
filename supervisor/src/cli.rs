//! Command-line interface of `ringdaq`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::client::AcquireArgs;
use crate::run_cmd::RunArgs;
use crate::sim_cmd::SimArgs;
use crate::tail_cmd::TailArgs;

/// `ringdaq --version`: the release, and the versions that decide which processes can work together (a stage,
/// consumer or Python package of another region layout or control protocol is refused).
pub fn version_text() -> String {
    format!(
        "{} (region layout {}, control protocol {})",
        env!("CARGO_PKG_VERSION"),
        shm_protocol::layout::LAYOUT_VERSION,
        shm_protocol::messages::PROTOCOL_VERSION
    )
}

/// ringdaq: data acquisition for fast detectors.
#[derive(Debug, Parser)]
#[command(name = "ringdaq", version = version_text(), about)]
pub struct Cli {
    /// Runtime directory of the pipeline (control socket). Default: $RINGDAQ_RUNTIME_DIR, else
    /// $XDG_RUNTIME_DIR/ringdaq, else /tmp/ringdaq-<uid>.
    #[arg(long, global = true, env = "RINGDAQ_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Log format of this process and the stages it starts (default: text, or $RINGDAQ_LOG_FORMAT). The level
    /// comes from RUST_LOG.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline: create the shared region and sockets, start and watch the stages, serve clients.
    Run(RunArgs),
    /// Arm an acquisition in the running pipeline.
    Acquire(AcquireArgs),
    /// Show the running pipeline's state.
    Status {
        /// As JSON (stable field names).
        #[arg(long)]
        json: bool,
    },
    /// End the running acquisition (its file is finished with the frames so far).
    Stop,
    /// Stop the pipeline cleanly.
    Shutdown,
    /// Send simulated detector traffic (real K2 IS / Summit datagrams).
    Sim(SimArgs),
    /// Capture the raw datagrams the running pipeline receives (with sector and receive time) to a file, for
    /// `ringdaq sim --replay`; or, `--format gatan`, its K2 frames in Gatan's raw layout (LiberTEM reads it).
    Record(crate::record_cmd::RecordArgs),
    /// A live view of the pipeline, refreshed every second (q quits).
    Top {
        /// Render one frame as text to stdout and exit (for scripts and logs).
        #[arg(long)]
        once: bool,
        /// With --once: columns.
        #[arg(long, default_value_t = 120)]
        width: u16,
        /// With --once: rows.
        #[arg(long, default_value_t = 32)]
        height: u16,
    },
    /// Print the shared region as it is (header, rings, cursors, stage records, counters), read-only, from
    /// outside; works when the stages, or the supervisor itself, are wedged.
    Inspect,
    /// Restart one stage now (it finishes what it holds; a new process takes over at once).
    Restart {
        /// The stage.
        stage: StageArg,
    },
    /// Stop managing a stage, to run it by hand (under a debugger, with more logging): prints its command line.
    Detach {
        /// The stage.
        stage: StageArg,
    },
    /// Hand a detached stage back to the supervisor (a hand-run process is told to stop first).
    Attach {
        /// The stage.
        stage: StageArg,
    },
    /// Present the parts written by several pipelines that each took some of one detector's sectors
    /// (`run --sectors`) as whole frames: an HDF5 virtual dataset /entry/data/data over the parts' files.
    Stitch(crate::stitch::StitchArgs),
    /// Read the running pipeline's frames (zero-copy) and print, every second, how many came, how many were
    /// missed, and their pixel statistics.
    Tail(TailArgs),
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A stage, on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StageArg {
    /// Sockets to block ring.
    Receiver,
    /// Block ring to frame ring.
    Assembler,
    /// Frame ring to files.
    Writer,
}

impl From<StageArg> for shm_protocol::pipeline::Stage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Receiver => Self::Receiver,
            StageArg::Assembler => Self::Assembler,
            StageArg::Writer => Self::Writer,
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = crate::config::resolve_runtime_dir(cli.runtime_dir.as_deref());
    match cli.command {
        Command::Run(a) => crate::run_cmd::run(&a, cli.runtime_dir.as_deref()),
        Command::Acquire(a) => crate::client::acquire(&rt, &a),
        Command::Status { json } => crate::client::status(&rt, json),
        Command::Stop => crate::client::stop(&rt),
        Command::Shutdown => crate::client::shutdown(&rt),
        Command::Record(a) => {
            let stop: &'static std::sync::atomic::AtomicBool =
                Box::leak(Box::new(std::sync::atomic::AtomicBool::new(false)));
            crate::signals::stop_on_signals(stop)?;
            crate::record_cmd::record(&rt, &a, stop, &mut std::io::stdout().lock())
        }
        Command::Top { once, width, height } => crate::top_cmd::run(&rt, once, width, height),
        Command::Inspect => crate::inspect_cmd::inspect(&rt, &mut std::io::stdout().lock()),
        Command::Restart { stage } => crate::client::restart(&rt, stage.into()),
        Command::Detach { stage } => crate::client::detach(&rt, stage.into()),
        Command::Attach { stage } => crate::client::attach(&rt, stage.into()),
        Command::Sim(a) => crate::sim_cmd::run(&a),
        Command::Stitch(a) => crate::stitch::run(&a),
        Command::Tail(a) => {
            let stop: &'static std::sync::atomic::AtomicBool =
                Box::leak(Box::new(std::sync::atomic::AtomicBool::new(false)));
            crate::signals::stop_on_signals(stop)?;
            crate::tail_cmd::run(&rt, &a, stop, &mut std::io::stdout().lock())
        }
    }
}
