//! Host memory a block passes through on its way between the engine's pool and
//! the network: page-aligned heap buffers, or pinned (page-locked) buffers under
//! the `cuda` feature. The bottom of the device layer: it allocates and frees,
//! and knows nothing of pools, staging or the data path.
//!
//! [`super::PoolMemory::alloc_staging`] picks the kind that suits the
//! attached pool; the staging pool above (the crate's `staging` module) keeps
//! and lends them.

use std::alloc::{alloc_zeroed, dealloc, Layout};

use crate::error::{AgentError, Result};

/// Alignment of host staging buffers (a page: good for DMA and O_DIRECT alike).
pub const STAGING_ALIGN: usize = 4096;

/// A zeroed, page-aligned heap buffer.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to [`STAGING_ALIGN`].
    pub fn new(len: usize) -> Result<Self> {
        let layout = Layout::from_size_align(len.max(1), STAGING_ALIGN)
            .map_err(|e| AgentError::InvalidRequest(format!("staging buffer of {len}: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).ok_or_else(|| {
            AgentError::Memory(format!("cannot allocate a {len}-byte staging buffer"))
        })?;
        Ok(Self { ptr, len })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes, initialised (zeroed) at allocation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Layout::from_size_align(self.len.max(1), STAGING_ALIGN) {
            // SAFETY: allocated in `new` with this very layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// Host memory of one staging buffer: ordinary page-aligned memory, or pinned
/// (page-locked) memory under the `cuda` feature.
#[derive(Debug)]
pub enum StagingMemory {
    /// Page-aligned heap memory (CPU path).
    Aligned(AlignedBuf),
    /// Page-locked host memory from `cuMemHostAlloc` (CUDA path).
    #[cfg(feature = "cuda")]
    Pinned(super::pinned::PinnedBuf),
}

impl StagingMemory {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Aligned(b) => b.as_slice(),
            #[cfg(feature = "cuda")]
            Self::Pinned(b) => b.as_slice(),
        }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Self::Aligned(b) => b.as_mut_slice(),
            #[cfg(feature = "cuda")]
            Self::Pinned(b) => b.as_mut_slice(),
        }
    }
}
