//! Helper process for the multi-process ring tests: `produce` or `consume`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a region, serve it on SOCKET and publish ITEMS items.
    Produce {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        items: u64,
        #[arg(long, default_value_t = 64)]
        slots: u32,
    },
    /// Receive a memfd at SOCKET, read slot 0 of ring 0 and write its complement into slot 1.
    Echo {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Attach to the producer at SOCKET and consume into OUT.
    Consume {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Produce { socket, items, slots } => ringdaq_tests::peer::produce(&socket, items, slots),
        Cmd::Echo { socket } => ringdaq_tests::peer::echo(&socket),
        Cmd::Consume { socket, out } => ringdaq_tests::peer::consume(&socket, &out),
    }
}
