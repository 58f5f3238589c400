//! `kvtier-bench`: trace replay and microbenchmarks. A thin shell: each
//! subcommand's flags and work live in its own module.

mod replay;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kvtier-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay a trace through LRU, kvtier's value policy and Belady; print the hit-rate table.
    Replay(replay::Args),
    /// Eviction throughput of the value policy with a large resident set.
    PolicySpeed(replay::speed::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Replay(args) => replay::run(args),
        Command::PolicySpeed(args) => replay::speed::run(args),
    }
}
