//! The `ringdaq` command: the supervisor that owns the region and the sockets, runs the stages and serves
//! clients, and the client commands that talk to it.

pub mod adopt;
pub mod block_tap;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod gatan_cmd;
pub mod geometry;
pub mod inspect_cmd;
pub mod metrics;
pub mod progress;
pub mod record_cmd;
pub mod restart_policy;
pub mod run_cmd;
pub mod signals;
pub mod sim_cmd;
pub mod sockets;
pub mod stage_process;
pub mod stage_state;
pub mod stages;
pub mod stitch;
pub mod tail_cmd;
pub mod top_cmd;
