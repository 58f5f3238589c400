//! Page-locked host memory for T1 when CUDA is present (`cuda` feature): the
//! host tier's whole arena is registered once with `cuMemHostRegister`
//! (PORTABLE: every context sees it as pinned), instead of one pinned
//! allocation per block, so that device copies from and to any slot run at
//! full speed and no block pays for pinning. Not write-combined: the CPU
//! reads the slots too (network sends).

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use super::arena::HostArena;

/// The registration of one arena's region; ends it when dropped (which the
/// arena does right before unmapping the region).
struct Registration {
    ctx: Arc<CudaContext>,
    ptr: *mut std::ffi::c_void,
}

// SAFETY: `ptr` is only passed back to the driver (cuMemHostUnregister), which
// may be called from any thread once the context is bound to it.
unsafe impl Send for Registration {}
// SAFETY: as above; `Registration` has no `&self` methods that touch `ptr`.
unsafe impl Sync for Registration {}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` was registered by `pin_arena` and is still mapped
            // (the arena drops this guard before unmapping).
            let _ = unsafe { sys::cuMemHostUnregister(self.ptr) }.result();
        }
    }
}

/// Registers `arena`'s region as pinned memory of device `ordinal`; `false`
/// (logged) without CUDA or when the driver refuses, and the tier runs on
/// ordinary (pageable) memory.
pub fn pin_arena(arena: &HostArena, ordinal: usize) -> bool {
    let (ptr, len) = arena.region();
    if len == 0 {
        return false;
    }
    // SAFETY: only tries to dlopen libcuda; no CUDA call is made when it is absent.
    if !unsafe { sys::is_culib_present() } {
        tracing::info!("libcuda not found: host tier uses pageable memory");
        return false;
    }
    let ctx = match CudaContext::new(ordinal) {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::warn!(ordinal, error = %e, "no CUDA device: host tier uses pageable memory");
            return false;
        }
    };
    if let Err(e) = ctx.bind_to_thread() {
        tracing::warn!(error = %e, "cannot bind the CUDA context: host tier uses pageable memory");
        return false;
    }
    let ptr = ptr.cast::<std::ffi::c_void>();
    // SAFETY: ptr..ptr+len is the arena's live mapping, which outlives the
    // registration (the arena drops the guard attached below before unmapping).
    let registered =
        unsafe { sys::cuMemHostRegister_v2(ptr, len, sys::CU_MEMHOSTREGISTER_PORTABLE) }.result();
    match registered {
        Ok(()) => {
            arena.attach(Box::new(Registration { ctx, ptr }));
            tracing::info!(bytes = len, "host arena registered as pinned memory");
            true
        }
        Err(e) => {
            tracing::warn!(bytes = len, error = %e, "cuMemHostRegister failed: host tier uses pageable memory");
            false
        }
    }
}
