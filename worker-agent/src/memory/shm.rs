//! A pool in a shared-memory file (`/dev/shm/kvtier/...`), mapped
//! read-write. The engine owns the file; the agent only maps it, and only
//! when it is a regular file beneath the agent's pool directory, reached
//! without a symbolic link, owned by the expected user: whoever can call
//! AttachPool must not be able to make the agent copy (Offload) or overwrite
//! (Onboard) any other file.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

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

/// Which files the agent accepts as pools.
#[derive(Debug, Clone)]
pub struct PoolAccess {
    /// Pools must lie beneath this directory (after resolving its links).
    pub dir: PathBuf,
    /// Owner every pool file must have.
    pub owner_uid: u32,
}

/// The agent process's effective user id.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn refused(path: &Path, why: impl std::fmt::Display) -> AgentError {
    AgentError::PoolRefused(format!("{}: {why}", path.display()))
}

impl ShmPool {
    /// Maps `path` after checking `access` allows it, and checks it spans the
    /// whole pool.
    pub fn open(path: &Path, geometry: Geometry, access: &PoolAccess) -> Result<Self> {
        if !path.is_absolute() {
            return Err(AgentError::InvalidRequest(format!(
                "shared-memory path {} must be absolute",
                path.display()
            )));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(refused(path, "\"..\" is not allowed in a pool path"));
        }
        let dir = access.dir.canonicalize().map_err(|e| {
            refused(
                path,
                format!(
                    "the agent's pool directory {} is unusable: {e}",
                    access.dir.display()
                ),
            )
        })?;
        // Links in the directories above the file are resolved; the file itself
        // is opened without following one.
        let parent = path
            .parent()
            .and_then(|p| p.canonicalize().ok())
            .ok_or_else(|| refused(path, "its directory does not exist"))?;
        if !parent.starts_with(&dir) {
            return Err(refused(
                path,
                format!(
                    "outside the agent's pool directory {} (--pool-dir): create the pool there",
                    dir.display()
                ),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => refused(
                    path,
                    "a symbolic link (pools are opened without following links)",
                ),
                _ => AgentError::Memory(format!("cannot open {}: {e}", path.display())),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| AgentError::Memory(format!("stat {}: {e}", path.display())))?;
        if !meta.file_type().is_file() {
            return Err(refused(path, "not a regular file"));
        }
        if meta.uid() != access.owner_uid {
            return Err(refused(
                path,
                format!(
                    "owned by uid {}, not {} (--pool-owner-uid)",
                    meta.uid(),
                    access.owner_uid
                ),
            ));
        }
        let len = meta.len();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            num_blocks: 4,
            block_bytes: 64,
            stride: 64,
            offset: 0,
        }
    }

    fn setup() -> (tempfile::TempDir, PoolAccess, PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("pools");
        std::fs::create_dir_all(dir.join("engine-a")).expect("mkdir");
        let pool = dir.join("engine-a").join("pool");
        std::fs::write(&pool, vec![0u8; 256]).expect("pool file");
        let access = PoolAccess {
            dir,
            owner_uid: own_uid(),
        };
        (root, access, pool)
    }

    fn refusal(result: Result<ShmPool>) -> String {
        match result {
            Err(AgentError::PoolRefused(msg)) => msg,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_regular_file_beneath_the_pool_directory_is_mapped() {
        let (_root, access, pool) = setup();
        ShmPool::open(&pool, geometry(), &access).expect("attach");
    }

    #[test]
    fn files_outside_the_pool_directory_are_refused() {
        let (root, access, _) = setup();
        let outside = root.path().join("secret");
        std::fs::write(&outside, vec![7u8; 256]).expect("file");
        let msg = refusal(ShmPool::open(&outside, geometry(), &access));
        assert!(msg.contains("outside the agent's pool directory"), "{msg}");
        let dotdot = access
            .dir
            .join("engine-a")
            .join("..")
            .join("..")
            .join("secret");
        assert!(refusal(ShmPool::open(&dotdot, geometry(), &access)).contains(".."));
    }

    #[test]
    fn links_out_of_the_directory_are_refused() {
        let (root, access, _) = setup();
        let outside = root.path().join("secret");
        std::fs::write(&outside, vec![7u8; 256]).expect("file");
        // A link as the pool file itself...
        let link = access.dir.join("link");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        assert!(refusal(ShmPool::open(&link, geometry(), &access)).contains("symbolic link"));
        // ...and a linked directory leading out.
        let linked_dir = access.dir.join("escape");
        std::os::unix::fs::symlink(root.path(), &linked_dir).expect("symlink dir");
        let msg = refusal(ShmPool::open(
            &linked_dir.join("secret"),
            geometry(),
            &access,
        ));
        assert!(msg.contains("outside"), "{msg}");
        assert_eq!(std::fs::read(&outside).expect("read"), vec![7u8; 256]);
    }

    #[test]
    fn other_owners_and_non_regular_files_are_refused() {
        let (_root, access, pool) = setup();
        let stranger = PoolAccess {
            owner_uid: own_uid().wrapping_add(1),
            ..access.clone()
        };
        assert!(refusal(ShmPool::open(&pool, geometry(), &stranger)).contains("owned by uid"));
        let dir_as_pool = access.dir.join("engine-a");
        let msg = match ShmPool::open(&dir_as_pool, geometry(), &access) {
            Err(AgentError::PoolRefused(msg)) | Err(AgentError::Memory(msg)) => msg,
            other => panic!("a directory was accepted: {other:?}"),
        };
        assert!(!msg.is_empty());
    }
}
