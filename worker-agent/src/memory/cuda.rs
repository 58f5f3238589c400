//! The engine's pool in GPU memory, opened from a CUDA IPC handle
//! (`cuIpcOpenMemHandle`); copies go device↔pinned host staging.
//!
//! Built only with the `cuda` feature. `libcuda` is loaded at run time
//! (`dynamic-loading`); its absence is a clear error at attach time, not a
//! crash at start.

use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::CudaContext;

use super::host::StagingMemory;
use super::pinned::PinnedBuf;
use super::{Geometry, PoolMemory};
use crate::error::{AgentError, Result};

fn check(what: &str, result: sys::CUresult) -> Result<()> {
    if result == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(AgentError::Cuda(format!("{what} failed: {result:?}")))
    }
}

/// Fails with a clear message when the CUDA driver library cannot be loaded.
pub fn ensure_driver() -> Result<()> {
    // SAFETY: only probes whether the shared library can be loaded.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(AgentError::Cuda(
            "the CUDA driver library (libcuda.so) was not found: run the agent on a host with \
             an NVIDIA driver, or attach a shared-memory pool instead"
                .into(),
        ))
    }
}

/// A device pool: opened from another process's IPC handle, or (tests,
/// in-process engines) an allocation of this process.
#[derive(Debug)]
pub struct CudaIpcPool {
    ctx: Arc<CudaContext>,
    base: sys::CUdeviceptr,
    geometry: Geometry,
    /// Opened with `cuIpcOpenMemHandle` (closed on drop), or borrowed.
    ipc_opened: bool,
}

// SAFETY: the device pointer is an address in the context, usable from any
// thread once the context is bound (every copy binds it first).
unsafe impl Send for CudaIpcPool {}
// SAFETY: copies touch disjoint block ranges chosen by the caller; the driver
// API is thread-safe.
unsafe impl Sync for CudaIpcPool {}

impl CudaIpcPool {
    /// Opens `handle` (64 bytes from `cuIpcGetMemHandle`) on `device`.
    pub fn open(handle: &[u8], device: u32, geometry: Geometry) -> Result<Self> {
        ensure_driver()?;
        let raw: [u8; 64] = handle.try_into().map_err(|_| {
            AgentError::InvalidRequest(format!(
                "a CUDA IPC handle is 64 bytes, got {}",
                handle.len()
            ))
        })?;
        let ctx = CudaContext::new(device as usize)
            .map_err(|e| AgentError::Cuda(format!("cannot open device {device}: {e:?}")))?;
        ctx.bind_to_thread()
            .map_err(|e| AgentError::Cuda(format!("bind context: {e:?}")))?;
        let mut ipc = sys::CUipcMemHandle_st { reserved: [0; 64] };
        for (dst, src) in ipc.reserved.iter_mut().zip(raw) {
            *dst = src as std::ffi::c_char;
        }
        let mut base: sys::CUdeviceptr = 0;
        // SAFETY: `base` is a valid out-pointer; the handle is passed by value.
        check("cuIpcOpenMemHandle", unsafe {
            sys::cuIpcOpenMemHandle_v2(
                &mut base,
                ipc,
                sys::CUipcMem_flags_enum::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32,
            )
        })?;
        // Owned from here: an early return closes the handle (Drop).
        let pool = Self {
            ctx,
            base,
            geometry,
            ipc_opened: true,
        };
        pool.check_allocation_covers_layout()?;
        Ok(pool)
    }

    /// Refuses a layout that reaches past the allocation behind the handle:
    /// copies there would read or write another allocation's memory.
    fn check_allocation_covers_layout(&self) -> Result<()> {
        let need = self.geometry.required_len()?;
        let mut alloc_base: sys::CUdeviceptr = 0;
        let mut alloc_size: usize = 0;
        // SAFETY: both out-pointers are valid; `base` is a live device pointer.
        check("cuMemGetAddressRange", unsafe {
            sys::cuMemGetAddressRange_v2(&mut alloc_base, &mut alloc_size, self.base)
        })?;
        let available = (alloc_size as u64).saturating_sub(self.base - alloc_base);
        if available < need {
            return Err(AgentError::PoolRefused(format!(
                "the CUDA allocation behind the IPC handle holds {available} bytes from the pool's \
                 start, but the pool layout needs {need}"
            )));
        }
        Ok(())
    }

    /// A pool over an allocation of this process.
    ///
    /// # Safety
    /// `base` must be a device allocation of `ctx` spanning
    /// `geometry.required_len()` bytes, alive for as long as the pool.
    pub unsafe fn from_device_ptr(
        ctx: Arc<CudaContext>,
        base: sys::CUdeviceptr,
        geometry: Geometry,
    ) -> Self {
        Self {
            ctx,
            base,
            geometry,
            ipc_opened: false,
        }
    }

    fn device_ptr(&self, block: u64, len: usize) -> Result<sys::CUdeviceptr> {
        if len != self.geometry.block_bytes {
            return Err(AgentError::InvalidRequest(format!(
                "buffer of {len} bytes for a block of {}",
                self.geometry.block_bytes
            )));
        }
        Ok(self.base + self.geometry.block_offset(block)?)
    }
}

impl PoolMemory for CudaIpcPool {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn alloc_staging(&self, len: usize) -> Result<StagingMemory> {
        Ok(StagingMemory::Pinned(PinnedBuf::new(&self.ctx, len)?))
    }

    fn copy_out(&self, block: u64, dst: &mut [u8]) -> Result<()> {
        let src = self.device_ptr(block, dst.len())?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| AgentError::Cuda(format!("bind context: {e:?}")))?;
        // SAFETY: src..src+len is inside the opened allocation (geometry checked);
        // dst is a host buffer of len bytes (pinned when it comes from staging).
        check("cuMemcpyDtoH", unsafe {
            sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len())
        })
    }

    fn copy_in(&self, block: u64, src: &[u8], staging: &mut [u8]) -> Result<()> {
        let dst = self.device_ptr(block, src.len())?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| AgentError::Cuda(format!("bind context: {e:?}")))?;
        // Through pinned staging: DMA from pageable memory would bounce anyway.
        let host: &[u8] = if staging.len() >= src.len() {
            staging[..src.len()].copy_from_slice(src);
            &staging[..src.len()]
        } else {
            src
        };
        // SAFETY: dst..dst+len is inside the opened allocation; host is len bytes.
        check("cuMemcpyHtoD", unsafe {
            sys::cuMemcpyHtoD_v2(dst, host.as_ptr().cast(), host.len())
        })
    }

    fn needs_staging_for_copy_in(&self) -> bool {
        true
    }
}

impl Drop for CudaIpcPool {
    fn drop(&mut self) {
        if self.ipc_opened && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: base came from cuIpcOpenMemHandle and is closed once.
            let r = unsafe { sys::cuIpcCloseMemHandle(self.base) };
            if r != sys::CUresult::CUDA_SUCCESS {
                tracing::warn!(?r, "cuIpcCloseMemHandle failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Runs on a host with an NVIDIA driver; elsewhere it says why it skips.
    use super::*;
    use cudarc::driver::DevicePtr;

    #[test]
    fn device_pool_round_trip_through_pinned_staging() -> Result<()> {
        if ensure_driver().is_err() {
            kvtier_testkit::prereq::missing(
                "the CUDA driver library (libcuda)",
                "run on a host with an NVIDIA driver",
            );
            return Ok(());
        }
        let ctx = match CudaContext::new(0) {
            Ok(c) => c,
            Err(e) => {
                kvtier_testkit::prereq::missing(
                    &format!("a CUDA device ({e:?})"),
                    "run on a host with an NVIDIA GPU",
                );
                return Ok(());
            }
        };
        let stream = ctx.default_stream();
        let (n, bb) = (8u64, 1usize << 20);
        let err = |e: cudarc::driver::DriverError| AgentError::Cuda(format!("{e:?}"));
        let device = stream.alloc_zeros::<u8>(n as usize * bb).map_err(err)?;
        let (base, _sync) = device.device_ptr(&stream);
        let geometry = Geometry {
            num_blocks: n,
            block_bytes: bb,
            stride: bb as u64,
            offset: 0,
        };
        // SAFETY: `device` spans the whole geometry and outlives `pool`.
        let pool = unsafe { CudaIpcPool::from_device_ptr(ctx.clone(), base, geometry) };
        let mut staging = pool.alloc_staging(bb)?;
        let src: Vec<u8> = (0..bb).map(|i| (i * 7 + 3) as u8).collect();
        for block in 0..n {
            pool.copy_in(block, &src, staging.as_mut_slice())?;
        }
        let mut back = pool.alloc_staging(bb)?;
        for block in 0..n {
            back.as_mut_slice().fill(0);
            pool.copy_out(block, back.as_mut_slice())?;
            assert!(back.as_slice() == src.as_slice(), "block {block} differs");
        }
        // device↔pinned bandwidth, for the record (not asserted)
        let started = std::time::Instant::now();
        for block in 0..n {
            pool.copy_out(block, back.as_mut_slice())?;
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "device->pinned: {:.1} GiB/s",
            (n as usize * bb) as f64 / secs / (1u64 << 30) as f64
        );
        assert!(pool.copy_out(n, back.as_mut_slice()).is_err());
        Ok(())
    }
}
