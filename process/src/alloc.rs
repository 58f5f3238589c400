//! The binaries' global allocator, chosen in one place.
//!
//! jemalloc keeps freed large buffers for reuse: with glibc's allocator every
//! multi-MiB message buffer was a fresh mmap, page-faulted and zeroed, then
//! unmapped (a third of the server's put/get CPU time in profiles). Each
//! binary crate has a default `jemalloc` feature that turns on this crate's
//! `jemalloc` feature and calls [`global_allocator!`](crate::global_allocator)
//! once; fuzzing builds turn the feature off (ASan brings its own allocator).

/// jemalloc's allocator type, for [`global_allocator!`](crate::global_allocator).
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc;

/// Installs jemalloc as the global allocator of the binary that expands it,
/// when *that* crate's `jemalloc` feature is on (which must enable
/// `kvtier-process/jemalloc`).
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[cfg(feature = "jemalloc")]
        #[global_allocator]
        static GLOBAL: $crate::alloc::Jemalloc = $crate::alloc::Jemalloc;
    };
}
