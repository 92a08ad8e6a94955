//! Command-line interface of `ringdaq`.

use clap::{Parser, Subcommand};

use crate::sim_cmd::SimArgs;

/// ringdaq: data acquisition for fast detectors.
#[derive(Debug, Parser)]
#[command(name = "ringdaq", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send simulated detector traffic (real K2 IS / Summit datagrams).
    Sim(SimArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim(a) => crate::sim_cmd::run(&a),
    }
}
