//! The staging pool: a fixed set of block-sized buffers, allocated once at
//! attach time and reused for every block. A semaphore with one permit per
//! buffer is the back-pressure: when all buffers are in flight, the next
//! copy waits until one comes back. Nothing is allocated per block.
//!
//! A [`Staged`] buffer goes back to the pool when dropped — including when it
//! was handed to the network as [`bytes::Bytes`] (via `Bytes::from_owner`) and
//! the transport is done encoding it.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    Pinned(crate::memory::cuda::PinnedBuf),
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

#[derive(Debug)]
struct Shared {
    free: Mutex<Vec<StagingMemory>>,
    permits: Arc<Semaphore>,
    buffer_len: usize,
}

/// A fixed pool of equally sized staging buffers.
#[derive(Debug, Clone)]
pub struct StagingPool {
    shared: Arc<Shared>,
    count: usize,
}

impl StagingPool {
    /// `count` buffers of `buffer_len` bytes, each from `alloc`.
    pub fn new(
        count: usize,
        buffer_len: usize,
        mut alloc: impl FnMut(usize) -> Result<StagingMemory>,
    ) -> Result<Self> {
        let count = count.max(1);
        let mut free = Vec::with_capacity(count);
        for _ in 0..count {
            free.push(alloc(buffer_len)?);
        }
        Ok(Self {
            shared: Arc::new(Shared {
                free: Mutex::new(free),
                permits: Arc::new(Semaphore::new(count)),
                buffer_len,
            }),
            count,
        })
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Length of every buffer.
    pub fn buffer_len(&self) -> usize {
        self.shared.buffer_len
    }

    /// Buffers free right now.
    pub fn available(&self) -> usize {
        self.shared.permits.available_permits()
    }

    /// Waits for a free buffer (back-pressure when all are in flight).
    pub async fn acquire(&self) -> Staged {
        // The semaphore is never closed, so acquiring cannot fail; fall back to
        // an unbounded wait-free path would break the bound, so loop instead.
        let permit = loop {
            if let Ok(p) = self.shared.permits.clone().acquire_owned().await {
                break p;
            }
            tokio::task::yield_now().await;
        };
        let memory = self.shared.free.lock().pop();
        Staged {
            memory,
            len: self.shared.buffer_len,
            shared: self.shared.clone(),
            _permit: permit,
        }
    }
}

/// One borrowed staging buffer; returns to its pool on drop.
#[derive(Debug)]
pub struct Staged {
    /// Always `Some` until drop (a permit guarantees a free buffer).
    memory: Option<StagingMemory>,
    len: usize,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Staged {
    /// The buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        match self.memory.as_mut() {
            Some(m) => &mut m.as_mut_slice()[..len],
            None => &mut [],
        }
    }
}

impl AsRef<[u8]> for Staged {
    fn as_ref(&self) -> &[u8] {
        match self.memory.as_ref() {
            Some(m) => &m.as_slice()[..self.len],
            None => &[],
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(m) = self.memory.take() {
            self.shared.free.lock().push(m);
        }
        // the permit is released after the buffer is back on the free list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(n: usize) -> StagingPool {
        StagingPool::new(n, 8192, |len| {
            Ok(StagingMemory::Aligned(AlignedBuf::new(len)?))
        })
        .expect("pool")
    }

    #[tokio::test]
    async fn buffers_are_reused_and_bounded() {
        let p = pool(2);
        let mut a = p.acquire().await;
        a.as_mut_slice()[0] = 7;
        let a_ptr = a.as_ref().as_ptr();
        assert_eq!(a.as_ref().as_ptr() as usize % STAGING_ALIGN, 0);
        let _b = p.acquire().await;
        assert_eq!(p.available(), 0);
        // a third acquire waits until one comes back
        let third = tokio::time::timeout(Duration::from_millis(50), p.acquire()).await;
        assert!(third.is_err(), "acquire must wait when the pool is empty");
        let bytes = bytes::Bytes::from_owner(a);
        assert_eq!(bytes[0], 7);
        drop(bytes);
        let c = p.acquire().await;
        assert_eq!(c.as_ref().as_ptr(), a_ptr, "the same buffer comes back");
    }
}
