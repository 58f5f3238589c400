//! The store's tier I/O: opens T0 (GPU, `cuda` feature), T1 (host) and T2
//! (disk) from the configuration, fixes each one's capacity, and reads,
//! writes and removes blocks in them.
//!
//! The tiers are internally synchronised and [`Tiers`] holds no store state,
//! so nothing here needs the store's lock: a call made under it today (the
//! writes of a put, demotions and promotions) can move out of it unchanged.

use crate::block::{Block, BlockKey};
use crate::config::StoreConfig;
use crate::tier::arena::HostArena;
use crate::tier::disk::DiskTier;
use crate::tier::host::HostTier;
use crate::tier::{BlockTier, ReadOutcome, Tier, TierError};

/// The enabled tiers and their capacities.
pub(super) struct Tiers {
    host: HostTier,
    disk: Option<DiskTier>,
    #[cfg(feature = "cuda")]
    gpu: Option<crate::tier::gpu::GpuTier>,
    /// Bytes each tier may hold, highest first (0: disabled). Fixed at open.
    capacity: [u64; 3],
}

impl Tiers {
    /// Opens the disk tier in `config.data_dir` (when its capacity is
    /// non-zero), the GPU tier (`cuda` feature), and the host tier with its
    /// arena of `config.host_capacity` bytes (pinned with the `cuda` feature).
    pub fn open(config: &StoreConfig) -> Result<Self, TierError> {
        let disk = if config.disk_capacity > 0 {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| TierError::Malformed {
                key: BlockKey::new(0, 0),
                reason: format!("cannot create {}: {e}", config.data_dir.display()),
            })?;
            Some(DiskTier::open(&config.data_dir, config.sync_writes)?)
        } else {
            None
        };
        #[cfg(feature = "cuda")]
        let gpu = crate::tier::gpu::GpuTier::open(config.gpu_device, config.gpu_capacity);
        #[cfg(feature = "cuda")]
        let gpu_capacity = if gpu.is_some() {
            config.gpu_capacity
        } else {
            0
        };
        #[cfg(not(feature = "cuda"))]
        let gpu_capacity = {
            if config.gpu_capacity > 0 {
                tracing::warn!("GPU tier requested but this build has no `cuda` feature; running host + disk only");
            }
            0
        };
        let arena = HostArena::reserve(config.host_capacity, config.host_prefault)?;
        #[cfg(feature = "cuda")]
        let pinned = crate::tier::pinned::pin_arena(&arena, config.gpu_device);
        #[cfg(not(feature = "cuda"))]
        let pinned = false;
        let setup = arena.setup();
        tracing::info!(
            bytes = setup.bytes,
            huge_pages = setup.huge_pages,
            prefaulted = setup.prefaulted,
            prefault_ms = setup.prefault_time.as_millis() as u64,
            pinned,
            "host tier arena reserved"
        );
        // The arena's size (the capacity rounded down to its slot alignment)
        // is the host tier's capacity.
        let host_capacity = setup.bytes as u64;
        let host = HostTier::new(arena);
        let capacity = [
            gpu_capacity,
            host_capacity,
            if disk.is_some() {
                config.disk_capacity
            } else {
                0
            },
        ];
        Ok(Self {
            host,
            disk,
            #[cfg(feature = "cuda")]
            gpu,
            capacity,
        })
    }

    /// The tier, when enabled in this build and configuration.
    pub fn get(&self, tier: Tier) -> Option<&dyn BlockTier> {
        match tier {
            #[cfg(feature = "cuda")]
            Tier::Gpu => self.gpu.as_ref().map(|g| g as &dyn BlockTier),
            #[cfg(not(feature = "cuda"))]
            Tier::Gpu => None,
            Tier::Host => Some(&self.host),
            Tier::Disk => self.disk.as_ref().map(|d| d as &dyn BlockTier),
        }
    }

    /// Bytes `tier` may hold (0: disabled).
    pub fn capacity(&self, tier: Tier) -> u64 {
        self.capacity[tier.index()]
    }

    /// Every tier's capacity, highest first.
    pub fn capacities(&self) -> &[u64; 3] {
        &self.capacity
    }

    /// The largest capacity of any tier.
    pub fn largest(&self) -> u64 {
        self.capacity.iter().copied().max().unwrap_or(0)
    }

    /// Enabled tiers at or below `from`, highest first, that can hold `bytes`.
    pub fn at_or_below(&self, from: Tier, bytes: u64) -> impl Iterator<Item = Tier> + '_ {
        Tier::ALL.into_iter().filter(move |t| {
            *t >= from
                && self.capacity[t.index()] >= bytes
                && self.capacity[t.index()] > 0
                && self.get(*t).is_some()
        })
    }

    /// Reads `key` from `from` to move it elsewhere; a block that is not
    /// there (or fails verification) is an error, not a miss.
    pub fn read_for_move(&self, key: BlockKey, from: Tier) -> Result<Block, TierError> {
        let t = self.get(from).ok_or_else(|| TierError::Malformed {
            key,
            reason: format!("tier {} disabled", from.as_str()),
        })?;
        match t.get(key)? {
            ReadOutcome::Found(block) => Ok(block),
            ReadOutcome::Missing | ReadOutcome::Corrupt => Err(TierError::Malformed {
                key,
                reason: format!("block vanished from the {} tier", from.as_str()),
            }),
        }
    }

    /// Writes `block` to `to` (an error when that tier is disabled).
    pub fn write(&self, to: Tier, key: BlockKey, block: &Block) -> Result<(), TierError> {
        let t = self.get(to).ok_or_else(|| TierError::Malformed {
            key,
            reason: format!("tier {} disabled", to.as_str()),
        })?;
        t.put(key, block)
    }

    /// Removes `key` from `from`'s storage; a failure is logged, not returned
    /// (the index forgets the block either way).
    pub fn remove(&self, key: BlockKey, from: Tier) {
        if let Some(t) = self.get(from) {
            if let Err(e) = t.remove(key) {
                tracing::warn!(%key, tier = from.as_str(), error = %e, "remove failed");
            }
        }
    }

    /// The host tier.
    pub fn host(&self) -> &HostTier {
        &self.host
    }

    /// The disk tier, when enabled.
    pub fn disk(&self) -> Option<&DiskTier> {
        self.disk.as_ref()
    }
}
