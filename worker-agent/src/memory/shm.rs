//! A pool in a shared-memory file (memfd path or `/dev/shm/...`), mapped
//! read-write. The engine owns the file; the agent only maps it.

use std::fs::OpenOptions;
use std::path::Path;

use memmap2::{MmapOptions, MmapRaw};

use super::host::{AlignedBuf, StagingMemory};
use super::{Geometry, PoolMemory};
use crate::error::{AgentError, Result};

/// A mapped shared-memory pool.
#[derive(Debug)]
pub struct ShmPool {
    /// Raw mapping: the engine writes other blocks concurrently, so no `&mut`
    /// to the whole mapping ever exists; each copy touches one block range.
    map: MmapRaw,
    geometry: Geometry,
}

impl ShmPool {
    /// Maps `path` and checks it spans the whole pool.
    pub fn open(path: &Path, geometry: Geometry) -> Result<Self> {
        if !path.is_absolute() {
            return Err(AgentError::InvalidRequest(format!(
                "shared-memory path {} must be absolute",
                path.display()
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| AgentError::Memory(format!("cannot open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| AgentError::Memory(format!("stat {}: {e}", path.display())))?
            .len();
        let need = geometry.required_len()?;
        if len < need {
            return Err(AgentError::Memory(format!(
                "{} is {len} bytes but the pool layout needs {need}",
                path.display()
            )));
        }
        // Populate: fault every page in once at attach time, not on the first
        // copy of each block (minor faults cost ~15% of a transfer otherwise).
        let map = MmapOptions::new()
            .len(need as usize)
            .populate()
            .map_raw(&file)
            .map_err(|e| AgentError::Memory(format!("mmap {}: {e}", path.display())))?;
        Ok(Self { map, geometry })
    }

    fn range(&self, block: u64, len: usize) -> Result<*mut u8> {
        if len != self.geometry.block_bytes {
            return Err(AgentError::InvalidRequest(format!(
                "buffer of {len} bytes for a block of {}",
                self.geometry.block_bytes
            )));
        }
        let off = self.geometry.block_offset(block)? as usize;
        // In range: `open` checked the mapping spans required_len().
        Ok(unsafe { self.map.as_mut_ptr().add(off) })
    }
}

impl PoolMemory for ShmPool {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn alloc_staging(&self, len: usize) -> Result<StagingMemory> {
        Ok(StagingMemory::Aligned(AlignedBuf::new(len)?))
    }

    fn copy_out(&self, block: u64, dst: &mut [u8]) -> Result<()> {
        let src = self.range(block, dst.len())?;
        // SAFETY: `src..src+len` lies inside the mapping (checked by `range`);
        // `dst` is a distinct Rust buffer, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy_in(&self, block: u64, src: &[u8], _staging: &mut [u8]) -> Result<()> {
        let dst = self.range(block, src.len())?;
        // SAFETY: as in `copy_out`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    fn needs_staging_for_copy_in(&self) -> bool {
        false
    }
}
