//! The `ringdaq` command: the supervisor that owns the region and the sockets, runs the stages and serves
//! clients, and the client commands that talk to it.

pub mod cli;
pub mod signals;
pub mod sim_cmd;
