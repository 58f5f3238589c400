//! The device layer: how the agent reaches the engine's KV pool.
//!
//! [`PoolMemory`] copies whole blocks between the pool and host staging
//! memory. Two implementations: [`shm::ShmPool`] (a shared-memory file the
//! agent maps; hosts without a GPU) and, under the `cuda` feature,
//! `cuda::CudaIpcPool` (the engine's device allocation opened with
//! `cuIpcOpenMemHandle`, copies through pinned staging). The data path above
//! is the same for both.
//!
//! Layers, lowest first (each uses only those before it):
//! - `pinned` (`cuda` only), then [`host`]: the host buffers blocks are staged in;
//! - this module: [`Geometry`] and the [`PoolMemory`] seam;
//! - [`shm`] and `cuda`: the two pool implementations.
//!
//! The staging pool (the crate's `staging` module) sits above all of them and
//! is not imported here.

pub mod host;
#[cfg(feature = "cuda")]
pub mod pinned;

pub mod shm;

#[cfg(feature = "cuda")]
pub mod cuda;

use kvtier_proto::v1::PoolLayout;

use crate::error::{AgentError, Result};
use host::StagingMemory;

/// Where block `i` of a pool lives, checked once at attach time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the pool.
    pub num_blocks: u64,
    /// Payload bytes per block.
    pub block_bytes: usize,
    /// Bytes between the starts of consecutive blocks (>= block_bytes).
    pub stride: u64,
    /// Byte offset of block 0 in the mapping / allocation.
    pub offset: u64,
}

impl Geometry {
    /// Validates a layout and computes the geometry.
    pub fn from_layout(layout: &PoolLayout, offset: u64) -> Result<Self> {
        if layout.num_blocks == 0 || layout.block_bytes == 0 {
            return Err(AgentError::InvalidRequest(
                "pool layout needs num_blocks > 0 and block_bytes > 0".into(),
            ));
        }
        let stride = if layout.block_stride_bytes == 0 {
            layout.block_bytes
        } else {
            layout.block_stride_bytes
        };
        if stride < layout.block_bytes {
            return Err(AgentError::InvalidRequest(format!(
                "block_stride_bytes {} is smaller than block_bytes {}",
                stride, layout.block_bytes
            )));
        }
        let block_bytes = usize::try_from(layout.block_bytes)
            .map_err(|_| AgentError::InvalidRequest("block_bytes too large".into()))?;
        let geometry = Self {
            num_blocks: layout.num_blocks,
            block_bytes,
            stride,
            offset,
        };
        geometry.required_len()?;
        Ok(geometry)
    }

    /// Bytes the mapping must span: offset + (n-1) * stride + block_bytes.
    pub fn required_len(&self) -> Result<u64> {
        (self.num_blocks - 1)
            .checked_mul(self.stride)
            .and_then(|v| v.checked_add(self.block_bytes as u64))
            .and_then(|v| v.checked_add(self.offset))
            .ok_or_else(|| AgentError::InvalidRequest("pool layout overflows u64".into()))
    }

    /// Byte offset of `block` in the mapping, after checking it is in range.
    pub fn block_offset(&self, block: u64) -> Result<u64> {
        if block >= self.num_blocks {
            return Err(AgentError::InvalidRequest(format!(
                "block id {block} is outside the pool (0..{})",
                self.num_blocks
            )));
        }
        Ok(self.offset + block * self.stride)
    }
}

/// Block copies between the engine's pool and host staging memory.
///
/// Copies are synchronous: the CPU path is a memcpy; the CUDA path issues a
/// device↔pinned copy and waits for it. Callers overlap them with network
/// transfer by running them in a task of their own.
pub trait PoolMemory: Send + Sync + std::fmt::Debug {
    /// The pool's geometry.
    fn geometry(&self) -> Geometry;

    /// Allocates one staging buffer of `len` bytes suited to this memory
    /// (page-aligned host memory, or pinned memory under CUDA).
    fn alloc_staging(&self, len: usize) -> Result<StagingMemory>;

    /// Copies block `block` of the pool into `dst` (exactly `block_bytes` long).
    fn copy_out(&self, block: u64, dst: &mut [u8]) -> Result<()>;

    /// Copies `src` (exactly `block_bytes` long) into block `block` of the
    /// pool. `staging` is a scratch buffer of the same size, used when the
    /// device cannot read `src` directly (the CUDA path copies through it).
    fn copy_in(&self, block: u64, src: &[u8], staging: &mut [u8]) -> Result<()>;

    /// Whether [`PoolMemory::copy_in`] needs a staging buffer.
    fn needs_staging_for_copy_in(&self) -> bool;
}
