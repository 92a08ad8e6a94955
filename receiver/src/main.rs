//! `ringdaq-receiver`: the receive stage as a process. Started by `ringdaq run`, or by hand for debugging.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use shm_protocol::Access;
use shm_protocol::messages::Role;
use shm_protocol::pipeline::Stage;
use shm_protocol::session::Session;

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
}

fn main() -> anyhow::Result<()> {
    shm_protocol::logging::init();
    let args = Args::parse();
    let _span = shm_protocol::logging::process_span("receiver").entered();
    let session = Session::open(&args.control, Role::Stage(Stage::Receiver), Access::ReadWrite)
        .with_context(|| format!("attaching to the pipeline at {}", args.control.display()))?;
    let Session { mut conn, region, fds } = session;
    let mut rx = receiver::Receiver::new(&region, fds)?;
    conn.send(&shm_protocol::messages::Request::Ready)?;
    tracing::info!("receiving");
    rx.run(&AtomicBool::new(false), || shm_protocol::session::should_stop(&mut conn))?;
    tracing::info!("stopped");
    Ok(())
}
