//! A simulated engine: owns a KV pool in a shared-memory file with the layout
//! an engine would have, "computes" blocks by filling them with deterministic
//! bytes derived from their hashes, and drives the agent exactly as a real
//! engine connector would (AttachPool, ReportBlocks, Offload, Onboard). It lets
//! the whole data path run without a GPU.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};
use tonic::transport::Channel;

use kvtier_proto::hashing::{effective_seed, BlockHasher};
use kvtier_proto::v1::worker_service_client::WorkerServiceClient;
use kvtier_proto::v1::*;
use kvtier_worker_agent::client::{connect, connect_lazy, ConnectError};

/// Errors of the simulated engine.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// File or mapping error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The agent refused a call.
    #[error("agent: {} ({:?})", .0.message(), .0.code())]
    Agent(#[from] tonic::Status),
    /// The agent could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
}

/// The AttachPool request describing `spec`'s pool (its file must exist:
/// the path is sent canonicalised).
pub fn attach_request(spec: &SimPoolSpec) -> Result<AttachPoolRequest, SimError> {
    let path = std::fs::canonicalize(&spec.path)?;
    Ok(AttachPoolRequest {
        namespace: spec.namespace.clone(),
        hashing: Some(spec.hashing.clone()),
        layout: Some(PoolLayout {
            num_blocks: spec.num_blocks,
            block_bytes: spec.hashing.block_bytes,
            block_stride_bytes: 0,
            num_layers: 0,
            dtype: "u8".into(),
        }),
        memory: Some(attach_pool_request::Memory::SharedMemory(
            SharedMemoryPool {
                path: path.display().to_string(),
                offset: 0,
            },
        )),
        engine_name: spec.engine_name.clone(),
    })
}

/// Creates (or grows) a pool file of `num_blocks × block_bytes` bytes.
pub fn create_pool_file(path: &Path, num_blocks: u64, block_bytes: u64) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let len = num_blocks * block_bytes;
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Tokens of a synthetic prompt: `n_blocks × block_tokens` ids derived from
/// `seed` (the integration tests' `prompt_hashes` uses the same formula).
pub fn prompt_tokens(seed: u32, n_blocks: usize, block_tokens: usize) -> Vec<u32> {
    (0..(n_blocks * block_tokens) as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(seed))
        .collect()
}

/// Fills `out` with the deterministic bytes of block `hash` (xorshift64 from
/// the hash; the integration tests' `payload_for` computes the same bytes).
pub fn fill_block(hash: u64, out: &mut [u8]) {
    let mut x = hash | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// What the simulated engine needs to attach.
#[derive(Debug, Clone)]
pub struct SimPoolSpec {
    /// Pool file (created if absent).
    pub path: PathBuf,
    /// Blocks in the pool.
    pub num_blocks: u64,
    /// Namespace on the cache server.
    pub namespace: String,
    /// Hashing configuration (its block_bytes is the pool's block size).
    pub hashing: HashingConfig,
    /// Name for logs.
    pub engine_name: String,
}

/// A simulated engine attached to an agent.
#[derive(Debug)]
pub struct SimEngine {
    client: WorkerServiceClient<Channel>,
    pool_id: u64,
    map: MmapRaw,
    block_bytes: usize,
    num_blocks: u64,
    hasher: BlockHasher,
}

impl SimEngine {
    /// Creates the pool file if needed and maps it, with a lazily connected
    /// client to `agent` (nothing is dialled until the first call, and a lost
    /// connection is redialled on the next one), without attaching: the
    /// caller attaches with [`attach_request`] on [`SimEngine::client`] and
    /// keeps the pool id itself. A worker that must keep serving while its
    /// agent is down starts this way.
    pub fn open(agent: &str, spec: &SimPoolSpec) -> Result<Self, SimError> {
        let block_bytes = spec.hashing.block_bytes;
        if block_bytes == 0 || spec.num_blocks == 0 || spec.hashing.block_tokens == 0 {
            return Err(SimError::Invalid(
                "block_bytes, num_blocks and block_tokens must be > 0".into(),
            ));
        }
        create_pool_file(&spec.path, spec.num_blocks, block_bytes)?;
        let file = OpenOptions::new().read(true).write(true).open(&spec.path)?;
        let map = MmapOptions::new()
            .len((spec.num_blocks * block_bytes) as usize)
            .map_raw(&file)?;
        let seed = effective_seed(
            if spec.hashing.seed == 0 {
                kvtier_proto::hashing::DEFAULT_SEED
            } else {
                spec.hashing.seed
            },
            &spec.hashing.salt,
        );
        Ok(Self {
            client: connect_lazy(agent)?,
            pool_id: 0,
            map,
            block_bytes: block_bytes as usize,
            num_blocks: spec.num_blocks,
            hasher: BlockHasher::new(spec.hashing.block_tokens as usize, seed),
        })
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// Creates the pool file if needed, maps it, and attaches it to the agent.
    pub async fn attach(agent: &str, spec: SimPoolSpec) -> Result<Self, SimError> {
        let block_bytes = spec.hashing.block_bytes;
        if block_bytes == 0 || spec.num_blocks == 0 || spec.hashing.block_tokens == 0 {
            return Err(SimError::Invalid(
                "block_bytes, num_blocks and block_tokens must be > 0".into(),
            ));
        }
        create_pool_file(&spec.path, spec.num_blocks, block_bytes)?;
        let file = OpenOptions::new().read(true).write(true).open(&spec.path)?;
        let map = MmapOptions::new()
            .len((spec.num_blocks * block_bytes) as usize)
            .map_raw(&file)?;
        let request = attach_request(&spec)?;
        let mut client = connect(agent).await?;
        let attached = client.attach_pool(request).await?.into_inner();
        let seed = effective_seed(
            if spec.hashing.seed == 0 {
                kvtier_proto::hashing::DEFAULT_SEED
            } else {
                spec.hashing.seed
            },
            &spec.hashing.salt,
        );
        Ok(Self {
            client,
            pool_id: attached.pool_id,
            map,
            block_bytes: block_bytes as usize,
            num_blocks: spec.num_blocks,
            hasher: BlockHasher::new(spec.hashing.block_tokens as usize, seed),
        })
    }

    /// The attachment id.
    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }

    /// A client to the agent.
    pub fn client(&self) -> WorkerServiceClient<Channel> {
        self.client.clone()
    }

    /// Sequence hashes of `tokens`.
    pub fn hashes(&self, tokens: &[u32]) -> Vec<u64> {
        self.hasher.sequence_hashes(tokens)
    }

    fn block_ptr(&self, block: u64) -> Result<*mut u8, SimError> {
        if block >= self.num_blocks {
            return Err(SimError::Invalid(format!("block {block} outside the pool")));
        }
        // SAFETY: block < num_blocks, and the mapping spans num_blocks × block_bytes.
        Ok(unsafe { self.map.as_mut_ptr().add(block as usize * self.block_bytes) })
    }

    /// A copy of block `block`'s bytes.
    pub fn read_block(&self, block: u64) -> Result<Vec<u8>, SimError> {
        let ptr = self.block_ptr(block)?;
        // SAFETY: ptr is valid for block_bytes bytes (block_ptr).
        Ok(unsafe { std::slice::from_raw_parts(ptr, self.block_bytes) }.to_vec())
    }

    /// "Computes" block `block` as the KV of `hash`.
    pub fn compute_block(&self, block: u64, hash: u64) -> Result<(), SimError> {
        let ptr = self.block_ptr(block)?;
        // SAFETY: as in read_block; the simulated engine is the only writer.
        fill_block(hash, unsafe {
            std::slice::from_raw_parts_mut(ptr, self.block_bytes)
        });
        Ok(())
    }

    /// Zeroes block `block` (before an onboard, so a verify proves the copy).
    pub fn clear_block(&self, block: u64) -> Result<(), SimError> {
        let ptr = self.block_ptr(block)?;
        // SAFETY: as in read_block.
        unsafe { std::ptr::write_bytes(ptr, 0, self.block_bytes) };
        Ok(())
    }

    /// Whether block `block` holds exactly the bytes of `hash`.
    pub fn verify_block(&self, block: u64, hash: u64) -> Result<bool, SimError> {
        let mut want = vec![0u8; self.block_bytes];
        fill_block(hash, &mut want);
        Ok(self.read_block(block)? == want)
    }

    fn pool_blocks(hashes: &[u64], first_block: u64) -> Vec<PoolBlock> {
        hashes
            .iter()
            .enumerate()
            .map(|(i, &h)| PoolBlock {
                block_id: first_block + i as u64,
                hash: h,
                parent_hash: i.checked_sub(1).map(|p| hashes[p]),
            })
            .collect()
    }

    /// Computes the prompt's blocks into `first_block..`, reports them stored
    /// (a worker event) and returns their hashes.
    pub async fn compute(
        &mut self,
        tokens: &[u32],
        first_block: u64,
    ) -> Result<Vec<u64>, SimError> {
        let hashes = self.hashes(tokens);
        for (i, &h) in hashes.iter().enumerate() {
            self.compute_block(first_block + i as u64, h)?;
        }
        self.report(WorkerEventKind::Stored, &hashes, first_block)
            .await?;
        Ok(hashes)
    }

    /// Reports blocks stored / removed to the agent; returns the event id.
    pub async fn report(
        &mut self,
        kind: WorkerEventKind,
        hashes: &[u64],
        first_block: u64,
    ) -> Result<u64, SimError> {
        Ok(self
            .client
            .report_blocks(ReportBlocksRequest {
                pool_id: self.pool_id,
                kind: kind as i32,
                blocks: Self::pool_blocks(hashes, first_block),
            })
            .await?
            .into_inner()
            .event_id)
    }

    /// Offloads `hashes` held in `first_block..`.
    pub async fn offload(
        &mut self,
        hashes: &[u64],
        first_block: u64,
    ) -> Result<OffloadResponse, SimError> {
        Ok(self
            .client
            .offload(OffloadRequest {
                pool_id: self.pool_id,
                blocks: Self::pool_blocks(hashes, first_block),
            })
            .await?
            .into_inner())
    }

    /// Onboards `hashes` into `first_block..` on behalf of LLM agent
    /// `agent_id` (empty: none).
    pub async fn onboard(
        &mut self,
        hashes: &[u64],
        first_block: u64,
        agent_id: &str,
    ) -> Result<OnboardResponse, SimError> {
        Ok(self
            .client
            .onboard(OnboardRequest {
                pool_id: self.pool_id,
                hashes: hashes.to_vec(),
                block_ids: (0..hashes.len() as u64).map(|i| first_block + i).collect(),
                agent_id: agent_id.to_string(),
            })
            .await?
            .into_inner())
    }
}
