//! T0: GPU HBM on the cache-server host, through cudarc's driver API with
//! dynamic loading (the crate builds without CUDA; libcuda is looked up at
//! run time).
//!
//! Each block is one device allocation holding its payload; reads copy it back
//! to host memory. [`GpuTier::open`] checks that libcuda can be loaded before
//! touching any CUDA call (cudarc panics at first use otherwise) and returns
//! `None`, with a log line, so that the store runs host + disk only.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use parking_lot::Mutex;

use super::{BlockTier, ReadOutcome, Tier, TierError};
use crate::block::{Block, BlockKey};

struct DeviceBlock {
    parent: Option<u64>,
    bytes: CudaSlice<u8>,
}

/// GPU HBM tier on one device.
pub struct GpuTier {
    stream: Arc<CudaStream>,
    blocks: Mutex<HashMap<BlockKey, DeviceBlock>>,
}

impl std::fmt::Debug for GpuTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTier").finish_non_exhaustive()
    }
}

impl GpuTier {
    /// Opens device `ordinal` when `capacity` > 0 and CUDA is usable; `None`
    /// (logged) otherwise.
    pub fn open(ordinal: usize, capacity: u64) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        // SAFETY: only tries to dlopen libcuda; no CUDA call is made when it is absent.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        if !present {
            tracing::warn!(
                "GPU tier requested ({capacity} bytes) but libcuda cannot be loaded; running host + disk only"
            );
            return None;
        }
        match CudaContext::new(ordinal) {
            Ok(ctx) => {
                tracing::info!(ordinal, capacity, "GPU tier enabled");
                Some(Self {
                    stream: ctx.default_stream(),
                    blocks: Mutex::new(HashMap::new()),
                })
            }
            Err(e) => {
                tracing::warn!(ordinal, error = %e, "cannot open CUDA device; running host + disk only");
                None
            }
        }
    }
}

impl BlockTier for GpuTier {
    fn level(&self) -> Tier {
        Tier::Gpu
    }

    fn put(&self, key: BlockKey, block: &Block) -> Result<(), TierError> {
        let bytes = self
            .stream
            .clone_htod(&block.payload[..])
            .map_err(|e| TierError::Gpu(e.to_string()))?;
        self.blocks.lock().insert(
            key,
            DeviceBlock {
                parent: block.parent,
                bytes,
            },
        );
        Ok(())
    }

    fn get(&self, key: BlockKey) -> Result<ReadOutcome, TierError> {
        let blocks = self.blocks.lock();
        let Some(block) = blocks.get(&key) else {
            return Ok(ReadOutcome::Missing);
        };
        let host = self
            .stream
            .clone_dtoh(&block.bytes)
            .map_err(|e| TierError::Gpu(e.to_string()))?;
        Ok(ReadOutcome::Found(Block {
            parent: block.parent,
            payload: Bytes::from(host),
        }))
    }

    fn remove(&self, key: BlockKey) -> Result<(), TierError> {
        self.blocks.lock().remove(&key);
        Ok(())
    }
}
