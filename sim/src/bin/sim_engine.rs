//! `kvtier-sim-engine`: a simulated inference engine with a shared-memory KV
//! pool, driving a `kvtier-agent` as a real engine connector would.
//!
//! - `compute`: attach, compute a synthetic prompt's blocks, report them, offload them.
//! - `onboard`: attach, onboard the same prompt into other blocks, verify the bytes.
//!
//! Prints one line of `key=value` fields with the outcome on stdout
//! (`kvtier-sim-engine stored=8 skipped=0 ...`), for scripts and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand};

use kvtier_process::LogArgs;
use kvtier_sim::args::PoolHashingArgs;
use kvtier_sim::engine::{prompt_tokens, SimEngine};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, ClapArgs)]
struct Common {
    /// Agent endpoint: http://host:port or unix:/path.
    #[arg(long, env = "KVTIER_AGENT", default_value = "http://127.0.0.1:50061")]
    agent: String,
    /// Pool file (e.g. /dev/shm/kvtier/sim-pool, beneath the agent's --pool-dir); created if absent.
    #[arg(long, env = "KVTIER_SIM_POOL")]
    pool: PathBuf,
    /// Blocks in the pool.
    #[arg(long, env = "KVTIER_SIM_BLOCKS", default_value_t = 256)]
    blocks: u64,
    #[command(flatten)]
    hashing: PoolHashingArgs,
    /// Model name.
    #[arg(long, env = "KVTIER_MODEL", default_value = "sim-model")]
    model: String,
    /// Engine name for logs.
    #[arg(long, default_value = "sim-engine")]
    name: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compute a prompt's blocks, report them stored, offload them.
    Compute(Prompt),
    /// Onboard a prompt's blocks and verify their bytes.
    Onboard(Prompt),
}

#[derive(Debug, ClapArgs)]
struct Prompt {
    /// Seed of the synthetic prompt.
    #[arg(long, default_value_t = 1)]
    prompt_seed: u32,
    /// Blocks in the prompt.
    #[arg(long, default_value_t = 8)]
    prompt_blocks: usize,
    /// First pool block to use.
    #[arg(long, default_value_t = 0)]
    first_block: u64,
    /// LLM agent the request serves (as registered with the cache server).
    #[arg(long, default_value = "")]
    agent_id: String,
}

fn main() -> ExitCode {
    kvtier_process::main("warn", |a: &Cli| &a.log, run)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = &cli.common;
    let spec = c
        .hashing
        .pool_spec(c.pool.clone(), c.blocks, c.model.clone(), c.name.clone());
    let mut engine = SimEngine::attach(&c.agent, spec)
        .await
        .context("attach the pool")?;
    match cli.command {
        Command::Compute(p) => {
            let tokens = prompt_tokens(
                p.prompt_seed,
                p.prompt_blocks,
                c.hashing.block_tokens as usize,
            );
            let hashes = engine.compute(&tokens, p.first_block).await?;
            let out = engine.offload(&hashes, p.first_block).await?;
            println!(
                "kvtier-sim-engine blocks={} stored={} skipped={} bytes_copied={}",
                hashes.len(),
                out.stored,
                out.skipped,
                out.bytes_copied
            );
        }
        Command::Onboard(p) => {
            let tokens = prompt_tokens(
                p.prompt_seed,
                p.prompt_blocks,
                c.hashing.block_tokens as usize,
            );
            let hashes = engine.hashes(&tokens);
            for i in 0..hashes.len() as u64 {
                engine.clear_block(p.first_block + i)?;
            }
            let out = engine.onboard(&hashes, p.first_block, &p.agent_id).await?;
            // Loaded blocks are now cached in this worker's pool, as a real
            // engine would report them (vLLM emits BlockStored for them).
            let prefix = &hashes[..out.loaded_prefix as usize];
            engine
                .report(
                    kvtier_proto::v1::WorkerEventKind::Stored,
                    prefix,
                    p.first_block,
                )
                .await?;
            let mut verified = 0;
            for (i, &h) in hashes.iter().enumerate().take(out.loaded_prefix as usize) {
                if engine.verify_block(p.first_block + i as u64, h)? {
                    verified += 1;
                }
            }
            if !out.degraded_reason.is_empty() {
                eprintln!("onboard degraded: {}", out.degraded_reason);
            }
            let loaded = out.loaded.iter().filter(|&&l| l).count();
            println!(
                "kvtier-sim-engine blocks={} loaded={loaded} loaded_prefix={} verified={verified} degraded={}",
                hashes.len(),
                out.loaded_prefix,
                u8::from(!out.degraded_reason.is_empty())
            );
        }
    }
    Ok(())
}
