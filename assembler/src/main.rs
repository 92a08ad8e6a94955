//! `ringdaq-assembler`: the assembly stage as a process. Started by `ringdaq run`, or by hand for debugging.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shm_protocol::pipeline::Stage;
use shm_protocol::session::Supervision;

/// Counted, so that the stage's record shows its allocations (none per datagram or frame once warm).
#[global_allocator]
static ALLOC: shm_protocol::alloc_count::CountingAllocator = shm_protocol::alloc_count::CountingAllocator;

/// The ringdaq assembly stage.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The supervisor's control socket.
    #[arg(long, env = "RINGDAQ_CONTROL")]
    control: PathBuf,
    /// Frames in flight.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Milliseconds without a block after which a frame is published incomplete.
    #[arg(long, default_value_t = 100)]
    timeout_ms: u64,
    /// Datagrams that must agree on a frame id outside the window to follow it as a reset.
    #[arg(long, default_value_t = 32)]
    reset_threshold: u32,
    /// Milliseconds without a frame after which a running acquisition ends short (reason `stream_idle`); 0: never.
    #[arg(long, default_value_t = assembler::DEFAULT_STREAM_IDLE.as_millis() as u64)]
    stream_idle_ms: u64,
    /// Seconds to wait for a new supervisor after this one's dies before finishing and exiting (orphaned).
    #[arg(long, default_value_t = shm_protocol::session::DEFAULT_ORPHAN_TIMEOUT.as_secs_f64())]
    orphan_timeout_s: f64,
}

fn main() -> anyhow::Result<()> {
    shm_protocol::logging::init();
    let args = Args::parse();
    let _span = shm_protocol::logging::process_span("assembler").entered();
    // The sockets the supervisor sends along are kept by the tie only (for a successor).
    let (mut sup, region, _sockets) = Supervision::open(&args.control, Stage::Assembler, args.orphan_timeout_s)
        .with_context(|| format!("attaching to the pipeline at {}", args.control.display()))?;
    let cfg = assembler::AssemblerConfig {
        window: args.window.max(1),
        timeout: Duration::from_millis(args.timeout_ms),
        reset_threshold: args.reset_threshold.max(1),
        stream_idle: (args.stream_idle_ms > 0).then(|| Duration::from_millis(args.stream_idle_ms)),
    };
    let mut asm = assembler::Assembler::new(&region, cfg)?;
    sup.send(&shm_protocol::messages::Request::Ready)?;
    asm.run(|| sup.should_stop(&region))?;
    tracing::info!("stopped");
    Ok(())
}
