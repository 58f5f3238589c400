//! `kvtier-bench`: trace replay and microbenchmarks. A thin shell: each
//! subcommand's flags and work live in its own module.

mod agent_bench;
mod cluster_bench;
mod cluster_live;
mod index_bench;
mod lookup_bench;
mod router_service;
mod system;
mod throughput;

use kvtier_bench::replay;

use anyhow::Result;
use clap::{Parser, Subcommand};

// Same allocator as kvtier-server, so client-side buffer churn is comparable.
kvtier_process::global_allocator!();

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
    /// Put/get of large blocks through a real kvtier-server vs plain TCP and Redis; warm restart.
    Throughput(throughput::Args),
    /// Offload/onboard through kvtier-agent + kvtier-server vs memcpy and plain TCP.
    Agent(agent_bench::Args),
    /// Router block-locality index: find_matches latency with and without a concurrent writer.
    Index(index_bench::Args),
    /// gRPC FindMatches of kvtier-router vs Dynamo's standalone indexer, fed the same vLLM events.
    RouterService(router_service::Args),
    /// System replay: a trace through kvtier-router, simulated workers, agents and
    /// kvtier-server, against round-robin and prefix-affinity baselines.
    System(system::Args),
    /// Cluster placement (weighted rendezvous over N cache servers): balance at 1M blocks
    /// and movement on join/leave against 1/(N+1) and against `hash mod N`, in process;
    /// with --live, fan-out overhead and failover time with real processes.
    Cluster(cluster_bench::Args),
    /// Lookup latency on an idle server vs while writers demote to disk at full speed
    /// (and vs the same writers without a disk tier).
    LookupLatency(lookup_bench::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Replay(args) => replay::run(args),
        Command::PolicySpeed(args) => replay::speed::run(args),
        Command::Throughput(args) => throughput::run(args),
        Command::Agent(args) => agent_bench::run_blocking(args),
        Command::RouterService(args) => router_service::run_blocking(args),
        Command::Index(args) => index_bench::run(args),
        Command::System(args) => system::run(args),
        Command::Cluster(args) => cluster_bench::run(args),
        Command::LookupLatency(args) => lookup_bench::run(args),
    }
}
