//! Page-locked host memory for T1 when CUDA is present (`cuda` feature).
//!
//! Allocated with `cuMemHostAlloc(PORTABLE)` — not write-combined, because the
//! host tier's bytes are read by the CPU too (network sends). Each block gets
//! its own allocation, released when the last `Bytes` view of it drops.

use std::sync::Arc;

use bytes::Bytes;
use cudarc::driver::{sys, CudaContext, PinnedHostSlice};

use super::host::HostMemory;
use super::TierError;

/// Owns one pinned allocation filled once; read-only afterwards.
struct PinnedBuf {
    slice: PinnedHostSlice<u8>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: `ptr` points into `slice`, which is Send + Sync and outlives it; the
// buffer is never written after construction.
unsafe impl Send for PinnedBuf {}
unsafe impl Sync for PinnedBuf {}

impl AsRef<[u8]> for PinnedBuf {
    fn as_ref(&self) -> &[u8] {
        let _ = &self.slice;
        // SAFETY: ptr/len describe the live allocation owned by `slice`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Pinned host memory of one CUDA context.
#[derive(Debug)]
pub struct PinnedMemory {
    ctx: Arc<CudaContext>,
}

impl PinnedMemory {
    /// Pinned memory for device `ordinal`, or `None` (logged) without CUDA.
    pub fn open(ordinal: usize) -> Option<Self> {
        // SAFETY: only tries to dlopen libcuda; no CUDA call is made when it is absent.
        if !unsafe { sys::is_culib_present() } {
            tracing::info!("libcuda not found: host tier uses ordinary memory");
            return None;
        }
        match CudaContext::new(ordinal) {
            Ok(ctx) => Some(Self { ctx }),
            Err(e) => {
                tracing::warn!(ordinal, error = %e, "no CUDA device: host tier uses ordinary memory");
                None
            }
        }
    }
}

impl HostMemory for PinnedMemory {
    fn copy_in(&self, payload: &[u8]) -> Result<Bytes, TierError> {
        let len = payload.len().max(1);
        // SAFETY: the allocation is fully written below before anyone reads it.
        let mut slice = unsafe {
            self.ctx
                .alloc_pinned_with_flags::<u8>(len, sys::CU_MEMHOSTALLOC_PORTABLE)
        }
        .map_err(|e| TierError::Gpu(format!("pinned allocation of {len} bytes: {e}")))?;
        let dst = slice
            .as_mut_slice()
            .map_err(|e| TierError::Gpu(e.to_string()))?;
        dst[..payload.len()].copy_from_slice(payload);
        let ptr = dst.as_ptr();
        Ok(Bytes::from_owner(PinnedBuf {
            slice,
            ptr,
            len: payload.len(),
        }))
    }

    fn name(&self) -> &'static str {
        "pinned"
    }
}
