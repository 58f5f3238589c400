//! Temporary directories. Plain ones come from `tempfile` (re-exported so
//! callers need no dependency of their own); pool files want memory-backed
//! storage, as an engine's shared KV pool would be.

use std::path::Path;

pub use tempfile::{tempdir, tempdir_in, TempDir};

/// A temporary directory in `/dev/shm` when the host has one, else in the
/// system's temporary directory.
pub fn shm_tempdir() -> std::io::Result<TempDir> {
    if Path::new("/dev/shm").is_dir() {
        if let Ok(dir) = tempdir_in("/dev/shm") {
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
