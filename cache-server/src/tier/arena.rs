//! The host tier's memory: one region of exactly `--host-capacity` bytes,
//! reserved (and by default pre-faulted) when the store opens, from which
//! block payloads get fixed-size slots.
//!
//! Why: a store must keep what it receives, and on a fresh allocation per
//! block the kernel's first-touch page faults (zeroing included) and the
//! allocator's work cost more than moving the bytes (measured in
//! `bench/RESULTS.md`, "Binary data plane"). Here the pages are faulted once,
//! at start (with transparent huge pages where the kernel offers them via
//! `madvise`), and a slot freed by an eviction goes back to the arena for the
//! next block of its size, never to the allocator. With CUDA the whole region
//! is registered once as pinned memory ([`HostArena::attach`] holds the
//! registration).
//!
//! # Slots and size classes
//! A payload of `len` bytes takes a slot of [`slot_size`]`(len)` bytes (`len`
//! rounded up to [`SLOT_ALIGN`]); each slot size is a class. Allocation, in
//! order:
//! 1. a recycled slot of the class (a per-class free list: O(1), the steady
//!    state of a full cache whose blocks share a size);
//! 2. carved from the free ranges (first fit from the lowest offset, so a
//!    fresh arena fills front to back);
//! 3. after returning every class's recycled slots to the free ranges
//!    (coalescing neighbours), carved again: a workload whose block sizes
//!    change is not stuck with slots of the old sizes.
//!
//! Otherwise there is no room and the caller decides (the store evicts).
//!
//! # Ownership
//! A slot is leased to one [`SlotMut`] (written by exactly one owner, e.g. a
//! socket read), then frozen into `Bytes` ([`SlotMut::freeze`]) that any
//! number of readers share. It returns to the arena when the last view
//! drops, so a block evicted while a GET is still writing it keeps its bytes
//! until that write is done: live slots never alias. The region itself is
//! unmapped only when the arena and every slot are gone.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::TierError;

/// Slot sizes are multiples of this: a payload takes at most
/// `SLOT_ALIGN - 1` bytes more than its length (none for the usual KV block
/// sizes, which are multiples of it), so the tier holds as many blocks as
/// its byte capacity says. Blocks of one power-of-two size stay aligned to
/// that size's alignment (up to the huge page) in a fresh arena.
pub const SLOT_ALIGN: usize = 8;
/// Transparent huge page size on x86-64 and most aarch64 kernels; the region
/// starts on such a boundary so that it can be backed by huge pages.
const HUGE_PAGE: usize = 2 << 20;
/// The base page size the pre-fault loop steps by (a lower bound).
const PAGE: usize = 4096;

/// Slot size (class) of a payload of `len` bytes.
pub fn slot_size(len: usize) -> usize {
    len.max(1).div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

/// How the region was set up, for logs and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArenaSetup {
    /// Bytes in the region (the host capacity).
    pub bytes: usize,
    /// The kernel accepted `MADV_HUGEPAGE` for it.
    pub huge_pages: bool,
    /// Every page was faulted in at start.
    pub prefaulted: bool,
    /// Time the pre-fault took.
    pub prefault_time: Duration,
}

/// Occupancy of the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArenaUsage {
    /// Bytes in the region.
    pub capacity: usize,
    /// Bytes in slots leased out (payloads held, or being received).
    pub live: usize,
    /// Bytes in recycled slots waiting in their class's free list.
    pub recycled: usize,
    /// Number of slots leased out.
    pub live_slots: usize,
}

/// The mapped region. Raw pointers, so `Send`/`Sync` are stated below.
struct Region {
    /// Start of the mapping (for `munmap`); null when nothing is mapped.
    map: *mut u8,
    map_len: usize,
    /// First byte of the arena (huge-page aligned inside the mapping).
    base: *mut u8,
    len: usize,
}

// SAFETY: the region is plain memory owned by the arena; which parts of it
// may be written, and by whom, is decided by the slot leases (one writer per
// slot, see `SlotMut`), never by the pointer's thread.
unsafe impl Send for Region {}
// SAFETY: as above; shared access goes through `&[u8]` of frozen slots only.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes of anonymous memory, huge-page aligned; asks for
    /// transparent huge pages and, with `prefault`, faults every page in.
    fn map(len: usize, prefault: bool) -> Result<(Self, ArenaSetup), TierError> {
        let mut setup = ArenaSetup {
            bytes: len,
            ..ArenaSetup::default()
        };
        if len == 0 {
            let region = Self {
                map: std::ptr::null_mut(),
                map_len: 0,
                base: std::ptr::NonNull::<u8>::dangling().as_ptr(),
                len: 0,
            };
            return Ok((region, setup));
        }
        let map_len = len
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| TierError::Memory(format!("host capacity {len} bytes is too large")))?;
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; no existing memory is touched.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(TierError::Memory(format!(
                "cannot reserve {len} bytes for the host tier: {}",
                std::io::Error::last_os_error()
            )));
        }
        let map = map.cast::<u8>();
        let skip = (HUGE_PAGE - (map as usize) % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: skip < HUGE_PAGE and the mapping is len + HUGE_PAGE long,
        // so base..base+len lies inside it.
        let base = unsafe { map.add(skip) };
        let region = Self {
            map,
            map_len,
            base,
            len,
        };
        setup.huge_pages = region.advise_huge_pages();
        if prefault {
            let started = Instant::now();
            region.prefault();
            setup.prefaulted = true;
            setup.prefault_time = started.elapsed();
        }
        Ok((region, setup))
    }

    #[cfg(target_os = "linux")]
    fn advise_huge_pages(&self) -> bool {
        // SAFETY: advice on our own mapping; it changes no contents.
        unsafe { libc::madvise(self.base.cast(), self.len, libc::MADV_HUGEPAGE) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn advise_huge_pages(&self) -> bool {
        false
    }

    /// Faults every page in (writable), so that no store pays for it later.
    fn prefault(&self) {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: populates our own mapping (Linux >= 5.14); contents stay zero.
            let populated = unsafe {
                libc::madvise(self.base.cast(), self.len, libc::MADV_POPULATE_WRITE) == 0
            };
            if populated {
                return;
            }
        }
        for offset in (0..self.len).step_by(PAGE) {
            // SAFETY: offset < len, inside the mapping; no slot is leased yet
            // (this runs before the arena is shared), and the page holds zero.
            unsafe { self.base.add(offset).write_volatile(0) };
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if !self.map.is_null() {
            // SAFETY: the mapping made in `map`; the last owner of the
            // region is going away, so no slot refers to it any more.
            unsafe { libc::munmap(self.map.cast(), self.map_len) };
        }
    }
}

/// The arena's free space: recycled slots per class, and free ranges.
#[derive(Debug, Default)]
struct FreeSpace {
    /// Slot size → offsets of recycled slots of that size.
    classes: HashMap<usize, Vec<usize>>,
    /// Free ranges outside any class, offset → length, never adjacent.
    ranges: BTreeMap<usize, usize>,
    live: usize,
    live_slots: usize,
    recycled: usize,
}

impl FreeSpace {
    fn new(len: usize) -> Self {
        let mut free = Self::default();
        if len > 0 {
            free.ranges.insert(0, len);
        }
        free
    }

    /// Takes a slot of `size` bytes (see the module doc for the order).
    fn take(&mut self, size: usize) -> Option<usize> {
        let offset = match self.classes.get_mut(&size).and_then(Vec::pop) {
            Some(offset) => {
                self.recycled -= size;
                offset
            }
            None => match self.carve(size) {
                Some(offset) => offset,
                None if self.recycled > 0 => {
                    self.return_recycled();
                    self.carve(size)?
                }
                None => return None,
            },
        };
        self.live += size;
        self.live_slots += 1;
        Some(offset)
    }

    /// Recycles a slot into its class's free list.
    fn give_back(&mut self, offset: usize, size: usize) {
        self.live -= size;
        self.live_slots -= 1;
        self.recycled += size;
        self.classes.entry(size).or_default().push(offset);
    }

    /// First fit from the lowest offset.
    fn carve(&mut self, size: usize) -> Option<usize> {
        let (offset, len) = self
            .ranges
            .iter()
            .find(|(_, len)| **len >= size)
            .map(|(o, l)| (*o, *l))?;
        self.ranges.remove(&offset);
        if len > size {
            self.ranges.insert(offset + size, len - size);
        }
        Some(offset)
    }

    /// Moves every recycled slot back into the free ranges.
    fn return_recycled(&mut self) {
        let classes = std::mem::take(&mut self.classes);
        for (size, offsets) in classes {
            for offset in offsets {
                self.insert_range(offset, size);
            }
        }
        self.recycled = 0;
    }

    /// Adds a free range, merging it with free neighbours.
    fn insert_range(&mut self, mut offset: usize, mut len: usize) {
        if let Some((&before, &before_len)) = self.ranges.range(..offset).next_back() {
            if before + before_len == offset {
                self.ranges.remove(&before);
                offset = before;
                len += before_len;
            }
        }
        if let Some(after_len) = self.ranges.remove(&(offset + len)) {
            len += after_len;
        }
        self.ranges.insert(offset, len);
    }
}

/// Dropped right before the region is unmapped (e.g. a CUDA host
/// registration, which must end while the memory is still mapped).
pub type RegionGuard = Box<dyn Send + Sync>;

struct Inner {
    free: Mutex<FreeSpace>,
    guard: Mutex<Option<RegionGuard>>,
    setup: ArenaSetup,
    // Declared last: dropped after the guard.
    region: Region,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.guard.get_mut().take();
    }
}

/// The host tier's pre-allocated memory (cheap to clone: shared).
#[derive(Clone)]
pub struct HostArena {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HostArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostArena")
            .field("setup", &self.inner.setup)
            .field("usage", &self.usage())
            .finish()
    }
}

impl HostArena {
    /// Reserves `capacity` bytes (rounded down to [`SLOT_ALIGN`]); with
    /// `prefault`, faults them all in now. A capacity above the memory the
    /// machine has available is reserved but not pre-faulted (logged), so
    /// that a generous `--host-capacity` does not stop the server at start.
    pub fn reserve(capacity: u64, prefault: bool) -> Result<Self, TierError> {
        let len = usize::try_from(capacity).map_err(|_| {
            TierError::Memory(format!("host capacity {capacity} bytes is too large"))
        })? / SLOT_ALIGN
            * SLOT_ALIGN;
        let prefault = prefault
            && {
                let available = available_memory();
                let fits = available.is_none_or(|a| len as u64 <= a);
                if !fits {
                    tracing::warn!(
                    capacity = len,
                    available = available.unwrap_or(0),
                    "host capacity exceeds the memory available now: not pre-faulting the host arena"
                );
                }
                fits
            };
        let (region, setup) = Region::map(len, prefault)?;
        Ok(Self {
            inner: Arc::new(Inner {
                free: Mutex::new(FreeSpace::new(len)),
                guard: Mutex::new(None),
                setup,
                region,
            }),
        })
    }

    /// How the region was set up.
    pub fn setup(&self) -> ArenaSetup {
        self.inner.setup
    }

    /// Occupancy now.
    pub fn usage(&self) -> ArenaUsage {
        let free = self.inner.free.lock();
        ArenaUsage {
            capacity: self.inner.region.len,
            live: free.live,
            recycled: free.recycled,
            live_slots: free.live_slots,
        }
    }

    /// A slot for a payload of `len` bytes (`len` > 0), or `None` when the
    /// arena has no room for one now.
    pub fn alloc(&self, len: usize) -> Option<SlotMut> {
        if len == 0 {
            return None;
        }
        let size = slot_size(len);
        let offset = self.inner.free.lock().take(size)?;
        Some(SlotMut {
            lease: Lease {
                arena: Arc::clone(&self.inner),
                offset,
                size,
            },
            len,
        })
    }

    /// A copy of `payload` in a slot of its own, or `None` without room.
    pub fn copy_in(&self, payload: &[u8]) -> Option<Bytes> {
        let mut slot = self.alloc(payload.len())?;
        slot.copy_from_slice(payload);
        Some(slot.freeze())
    }

    /// Whether `bytes` lies inside this arena's region.
    pub fn owns(&self, bytes: &[u8]) -> bool {
        let region = &self.inner.region;
        let (start, end) = (region.base as usize, region.base as usize + region.len);
        let p = bytes.as_ptr() as usize;
        !bytes.is_empty() && p >= start && p + bytes.len() <= end
    }

    /// Start and length of the region, for registering it with a device
    /// driver (the `cuda` feature pins it with `cuMemHostRegister`).
    pub fn region(&self) -> (*mut u8, usize) {
        (self.inner.region.base, self.inner.region.len)
    }

    /// Keeps `guard` until the region is unmapped, and drops it right before.
    pub fn attach(&self, guard: RegionGuard) {
        *self.inner.guard.lock() = Some(guard);
    }
}

/// Bytes available for new allocations (`MemAvailable`), when the system says.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One leased slot; returns it to the arena when dropped.
struct Lease {
    arena: Arc<Inner>,
    offset: usize,
    size: usize,
}

impl Lease {
    fn ptr(&self) -> *mut u8 {
        // SAFETY: offset + size <= region.len (the free space only hands out
        // ranges inside the region), so the pointer stays inside the mapping.
        unsafe { self.arena.region.base.add(self.offset) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.arena.free.lock().give_back(self.offset, self.size);
    }
}

/// A slot being filled: the only view of its bytes until [`SlotMut::freeze`].
pub struct SlotMut {
    lease: Lease,
    len: usize,
}

impl std::fmt::Debug for SlotMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotMut")
            .field("offset", &self.lease.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl SlotMut {
    /// The filled slot as shared, read-only `Bytes` (no copy).
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(Slot {
            lease: self.lease,
            len: self.len,
        })
    }
}

impl Deref for SlotMut {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the lease's range is mapped while its Arc lives and is
        // leased to this SlotMut alone (len <= size); the memory is
        // initialised (zero-filled by the kernel, or earlier payloads).
        unsafe { std::slice::from_raw_parts(self.lease.ptr(), self.len) }
    }
}

impl DerefMut for SlotMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.lease.ptr(), self.len) }
    }
}

/// A frozen slot: the owner behind a payload's `Bytes`.
struct Slot {
    lease: Lease,
    len: usize,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: as in `SlotMut::deref`; frozen slots are never written.
        unsafe { std::slice::from_raw_parts(self.lease.ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests;
