//! The `tern-loadgen` command: `send` and `sink`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tern-loadgen",
    version,
    about = "SMTP load generator and sink for benchmarking any MTA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send messages to one or more SMTP targets and measure.
    Send(tern_loadgen::send::SendArgs),
    /// Accept and discard messages, verify them, and measure.
    Sink(tern_loadgen::sink::SinkArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Send(args) => tern_loadgen::send::main(args),
        Command::Sink(args) => tern_loadgen::sink::main(args),
    }
}
