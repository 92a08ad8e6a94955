//! `ringdaq-receiver`: the receive stage as a process. Started by `ringdaq run`, or by hand for debugging.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use shm_protocol::pipeline::Stage;
use shm_protocol::session::Supervision;

/// Counted, so that the stage's record shows its allocations (none per datagram or frame once warm).
#[global_allocator]
static ALLOC: shm_protocol::alloc_count::CountingAllocator = shm_protocol::alloc_count::CountingAllocator;

/// The ringdaq receive stage.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The supervisor's control socket.
    #[arg(long, env = "RINGDAQ_CONTROL")]
    control: PathBuf,
    /// Seconds to wait for a new supervisor after this one's dies before finishing and exiting (orphaned).
    #[arg(long, default_value_t = shm_protocol::session::DEFAULT_ORPHAN_TIMEOUT.as_secs_f64())]
    orphan_timeout_s: f64,
}

fn main() -> anyhow::Result<()> {
    shm_protocol::logging::init();
    let args = Args::parse();
    let _span = shm_protocol::logging::process_span("receiver").entered();
    let (mut sup, region, fds) = Supervision::open(&args.control, Stage::Receiver, args.orphan_timeout_s)
        .with_context(|| format!("attaching to the pipeline at {}", args.control.display()))?;
    let mut rx = receiver::Receiver::new(&region, fds)?;
    sup.send(&shm_protocol::messages::Request::Ready)?;
    tracing::info!("receiving");
    rx.run(&AtomicBool::new(false), || sup.should_stop(&region))?;
    tracing::info!("stopped");
    Ok(())
}
