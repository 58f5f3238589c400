//! Temporary directories. Plain ones come from `tempfile` (re-exported so
//! callers need no dependency of their own); pool files want memory-backed
//! storage, as an engine's shared KV pool would be.

use std::path::Path;

pub use tempfile::{tempdir, tempdir_in, TempDir};

/// Where `kvtier-agent` accepts shared-memory pools by default (its
/// `--pool-dir`): pool files of tests and benchmarks go beneath it.
pub const AGENT_POOL_DIR: &str = "/dev/shm/kvtier";

/// A temporary directory beneath [`AGENT_POOL_DIR`] when the host has
/// `/dev/shm`, else in the system's temporary directory (an agent then needs
/// `--pool-dir` pointing there).
pub fn shm_tempdir() -> std::io::Result<TempDir> {
    if Path::new("/dev/shm").is_dir() && std::fs::create_dir_all(AGENT_POOL_DIR).is_ok() {
        if let Ok(dir) = tempdir_in(AGENT_POOL_DIR) {
            return Ok(dir);
        }
    }
    tempdir()
}

#[cfg(test)]
mod tests {
    #[test]
    fn shm_dir_is_writable_and_removed() {
        let dir = super::shm_tempdir().unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("pool"), [1u8; 16]).unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
