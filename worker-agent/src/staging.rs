//! The staging pool: a fixed set of block-sized buffers, allocated once at
//! attach time and reused for every block. A semaphore with one permit per
//! buffer is the back-pressure: when all buffers are in flight, the next
//! copy waits until one comes back. Nothing is allocated per block.
//!
//! A [`Staged`] buffer goes back to the pool when dropped — including when it
//! was handed to the network as [`bytes::Bytes`] (via `Bytes::from_owner`) and
//! the transport is done encoding it.
//!
//! The pool sits above the device layer: the buffers themselves (page-aligned
//! or pinned host memory) are [`crate::memory::host`] types, allocated by the
//! attached [`crate::memory::PoolMemory`]; this module only counts and lends them.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Result;
use crate::memory::host::StagingMemory;

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
    use crate::memory::host::{AlignedBuf, STAGING_ALIGN};
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
