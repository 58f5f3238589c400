//! Page-locked host memory from the CUDA driver (`cuMemHostAlloc`): the
//! staging buffers of a device pool, so that device↔host copies are DMA
//! without a bounce. Built only with the `cuda` feature; below
//! [`super::host`], which wraps it as [`super::host::StagingMemory::Pinned`].

use std::sync::Arc;

use cudarc::driver::{CudaContext, PinnedHostSlice};

use crate::error::{AgentError, Result};

/// Page-locked host memory used as a staging buffer.
#[derive(Debug)]
pub struct PinnedBuf {
    slice: PinnedHostSlice<u8>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is owned exclusively (PinnedHostSlice is Send + Sync);
// `ptr` points into it and is only dereferenced through &self / &mut self.
unsafe impl Send for PinnedBuf {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for PinnedBuf {}

impl PinnedBuf {
    /// `len` zeroed bytes of page-locked memory from `ctx` (`cuMemHostAlloc`).
    pub fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        // Not write-combined: the CPU reads staging buffers (to send them).
        // SAFETY: the memory is zeroed below before any read.
        let mut slice = unsafe { ctx.alloc_pinned_with_flags::<u8>(len.max(1), 0) }
            .map_err(|e| AgentError::Cuda(format!("cuMemHostAlloc({len}): {e:?}")))?;
        let ptr = slice
            .as_mut_ptr()
            .map_err(|e| AgentError::Cuda(format!("pinned buffer: {e:?}")))?;
        // SAFETY: ptr is valid for len bytes.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(Self { slice, ptr, len })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid, initialised allocation of len bytes owned by `slice`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above; &mut self makes it exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Bytes allocated.
    pub fn capacity(&self) -> usize {
        self.slice.len()
    }
}
