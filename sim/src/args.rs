//! The flags both simulator binaries share: how their pool's blocks are
//! hashed and sized, and the namespace they use. One definition, so the
//! simulated engine and the simulated worker can never drift apart on a flag
//! or its environment variable.

use std::path::PathBuf;

use kvtier_proto::v1::HashingConfig;

use crate::engine::SimPoolSpec;

/// Block geometry, hashing and namespace flags (each with its `KVTIER_*` env).
#[derive(Debug, Clone, clap::Args)]
pub struct PoolHashingArgs {
    /// Bytes per block.
    #[arg(long, env = "KVTIER_SIM_BLOCK_BYTES", default_value_t = 65_536)]
    pub block_bytes: u64,
    /// Tokens per block.
    #[arg(long, env = "KVTIER_BLOCK_TOKENS", default_value_t = 16)]
    pub block_tokens: u32,
    /// Base XXH3 seed.
    #[arg(long, env = "KVTIER_SEED", default_value_t = kvtier_proto::hashing::DEFAULT_SEED)]
    pub seed: u64,
    /// Namespace salt.
    #[arg(long, env = "KVTIER_SALT", default_value = "")]
    pub salt: String,
    /// KV layout descriptor.
    #[arg(long, env = "KVTIER_KV_LAYOUT", default_value = "sim:layers=1,kv=2")]
    pub kv_layout: String,
    /// Cache-server namespace (as the agent's other engines use it).
    #[arg(long, env = "KVTIER_NAMESPACE", default_value = "sim")]
    pub namespace: String,
}

impl PoolHashingArgs {
    /// The pool a simulator attaches: `num_blocks` blocks in the file at
    /// `path`, hashed as these flags say, for `model`.
    pub fn pool_spec(
        &self,
        path: PathBuf,
        num_blocks: u64,
        model: String,
        engine_name: String,
    ) -> SimPoolSpec {
        SimPoolSpec {
            path,
            num_blocks,
            namespace: self.namespace.clone(),
            hashing: HashingConfig {
                block_tokens: self.block_tokens,
                seed: self.seed,
                salt: self.salt.clone(),
                block_bytes: self.block_bytes,
                kv_layout: self.kv_layout.clone(),
                model,
            },
            engine_name,
        }
    }
}
