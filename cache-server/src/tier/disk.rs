//! T2: NVMe through RocksDB.
//!
//! Three column families:
//! - `blocks`: key → payload, with BlobDB on so that large values live in blob
//!   files and compaction does not rewrite them;
//! - `block_meta`: key → a small fixed record (length, XXH3 checksum, parent),
//!   scanned at start-up to rebuild the index without reading any payload;
//! - `settings`: small store-wide records (e.g. namespace configurations).
//!
//! A block's payload and meta record are written in one `WriteBatch`, so after
//! any crash (including `kill -9`) either both are there or neither. Every read
//! verifies the payload against the checksum in its meta record; a mismatch,
//! or RocksDB's own corruption error, is reported as [`ReadOutcome::Corrupt`]
//! and the block is deleted, never returned.

use std::path::Path;

use bytes::Bytes;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, ErrorKind, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};

use super::{BlockTier, ReadOutcome, Tier, TierError};
use crate::block::{checksum, Block, BlockKey};

const CF_BLOCKS: &str = "blocks";
const CF_META: &str = "block_meta";
const CF_SETTINGS: &str = "settings";
const META_VERSION: u8 = 1;
const META_LEN: usize = 26;
const FLAG_HAS_PARENT: u8 = 1;

/// A store-wide setting: key and value bytes.
pub type Setting = (Vec<u8>, Vec<u8>);

/// Fixed-size record kept beside each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMeta {
    /// Payload length in bytes.
    pub len: u64,
    /// XXH3-64 of the payload.
    pub checksum: u64,
    /// Parent sequence hash.
    pub parent: Option<u64>,
}

impl BlockMeta {
    /// The fixed 26-byte on-disk record.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        out[0] = META_VERSION;
        out[1] = if self.parent.is_some() {
            FLAG_HAS_PARENT
        } else {
            0
        };
        out[2..10].copy_from_slice(&self.len.to_le_bytes());
        out[10..18].copy_from_slice(&self.checksum.to_le_bytes());
        out[18..26].copy_from_slice(&self.parent.unwrap_or(0).to_le_bytes());
        out
    }

    /// Decodes [`BlockMeta::encode`]; `None` for any other input (public for the fuzzer).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != META_LEN || bytes[0] != META_VERSION {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(Self {
            len: u64_at(2),
            checksum: u64_at(10),
            parent: (bytes[1] & FLAG_HAS_PARENT != 0).then(|| u64_at(18)),
        })
    }
}

/// RocksDB-backed tier.
pub struct DiskTier {
    db: DB,
    sync_writes: bool,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("path", &self.db.path())
            .finish()
    }
}

impl DiskTier {
    /// Opens (or creates) the tier in `dir`.
    pub fn open(dir: &Path, sync_writes: bool) -> Result<Self, TierError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);

        let mut blocks = Options::default();
        blocks.set_enable_blob_files(true);
        blocks.set_min_blob_size(4096);
        blocks.set_blob_file_size(256 << 20);
        blocks.set_blob_compression_type(DBCompressionType::None);
        blocks.set_enable_blob_gc(true);
        blocks.set_write_buffer_size(128 << 20);

        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_BLOCKS, blocks),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_SETTINGS, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs)?;
        Ok(Self { db, sync_writes })
    }

    /// Overwrites `key`'s payload behind its meta record's back (tests of
    /// check-sum handling above this tier).
    #[cfg(test)]
    pub(crate) fn tamper(&self, key: BlockKey, payload: &[u8]) {
        self.db
            .put_cf(self.cf(CF_BLOCKS), key.to_bytes(), payload)
            .expect("tamper");
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // The three families are created by `open`; their absence is a bug.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} missing"))
    }

    fn write_opts(&self) -> WriteOptions {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes);
        opts
    }

    /// Every block's key and meta record, for rebuilding the index at start-up.
    /// Records that do not decode are deleted and skipped.
    pub fn scan(&self) -> Result<Vec<(BlockKey, BlockMeta)>, TierError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_META), IteratorMode::Start) {
            let (key, value) = item?;
            match (BlockKey::from_bytes(&key), BlockMeta::decode(&value)) {
                (Some(k), Some(meta)) => out.push((k, meta)),
                _ => bad.push(key),
            }
        }
        for key in bad {
            tracing::warn!(
                "dropping undecodable disk meta record ({} bytes key)",
                key.len()
            );
            self.db.delete_cf(self.cf(CF_META), &key)?;
            self.db.delete_cf(self.cf(CF_BLOCKS), &key)?;
        }
        Ok(out)
    }

    /// Stores a small store-wide setting.
    pub fn put_setting(&self, key: &[u8], value: &[u8]) -> Result<(), TierError> {
        let mut opts = self.write_opts();
        opts.set_sync(true);
        self.db
            .put_cf_opt(self.cf(CF_SETTINGS), key, value, &opts)?;
        Ok(())
    }

    /// All settings whose key starts with `prefix`.
    pub fn settings_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Setting>, TierError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_SETTINGS), prefix) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Flushes memtables to files (used on graceful shutdown).
    pub fn flush(&self) -> Result<(), TierError> {
        for name in [CF_BLOCKS, CF_META, CF_SETTINGS] {
            self.db.flush_cf(self.cf(name))?;
        }
        self.db.flush_wal(true)?;
        Ok(())
    }

    fn delete_both(&self, key: BlockKey) -> Result<(), TierError> {
        let k = key.to_bytes();
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_META), k);
        batch.delete_cf(self.cf(CF_BLOCKS), k);
        self.db.write_opt(batch, &self.write_opts())?;
        Ok(())
    }
}

impl BlockTier for DiskTier {
    fn level(&self) -> Tier {
        Tier::Disk
    }

    fn put(&self, key: BlockKey, block: &Block) -> Result<(), TierError> {
        let k = key.to_bytes();
        let meta = BlockMeta {
            len: block.len(),
            checksum: checksum(&block.payload),
            parent: block.parent,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_BLOCKS), k, &block.payload);
        batch.put_cf(self.cf(CF_META), k, meta.encode());
        self.db.write_opt(batch, &self.write_opts())?;
        Ok(())
    }

    fn get(&self, key: BlockKey) -> Result<ReadOutcome, TierError> {
        let k = key.to_bytes();
        let Some(meta_bytes) = self.db.get_pinned_cf(self.cf(CF_META), k)? else {
            return Ok(ReadOutcome::Missing);
        };
        let Some(meta) = BlockMeta::decode(&meta_bytes) else {
            drop(meta_bytes);
            self.delete_both(key)?;
            return Ok(ReadOutcome::Corrupt);
        };
        drop(meta_bytes);
        let payload = match self.db.get_cf(self.cf(CF_BLOCKS), k) {
            Ok(Some(p)) => p,
            Ok(None) => {
                // Meta without payload can only come from outside tampering.
                self.delete_both(key)?;
                return Ok(ReadOutcome::Corrupt);
            }
            Err(e) if e.kind() == ErrorKind::Corruption => {
                tracing::warn!(%key, error = %e, "rocksdb reports a corrupt block");
                self.delete_both(key)?;
                return Ok(ReadOutcome::Corrupt);
            }
            Err(e) => return Err(e.into()),
        };
        if payload.len() as u64 != meta.len || checksum(&payload) != meta.checksum {
            tracing::warn!(%key, "block failed its checksum on read; dropped");
            self.delete_both(key)?;
            return Ok(ReadOutcome::Corrupt);
        }
        Ok(ReadOutcome::Found(Block {
            parent: meta.parent,
            payload: Bytes::from(payload),
        }))
    }

    fn remove(&self, key: BlockKey) -> Result<(), TierError> {
        self.delete_both(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8, len: usize, parent: Option<u64>) -> Block {
        Block {
            parent,
            payload: Bytes::from(vec![byte; len]),
        }
    }

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k1 = BlockKey::new(1, 10);
        let k2 = BlockKey::new(1, 11);
        {
            let tier = DiskTier::open(dir.path(), false).expect("open");
            tier.put(k1, &block(7, 10_000, None)).expect("put");
            tier.put(k2, &block(8, 100, Some(10))).expect("put");
            tier.remove(k1).expect("remove");
            tier.put(k1, &block(9, 5000, None)).expect("put");
            tier.flush().expect("flush");
        }
        let tier = DiskTier::open(dir.path(), false).expect("reopen");
        let mut scanned = tier.scan().expect("scan");
        scanned.sort_by_key(|(k, _)| *k);
        assert_eq!(scanned.len(), 2);
        assert_eq!(scanned[1].1.parent, Some(10));
        match tier.get(k1).expect("get") {
            ReadOutcome::Found(b) => assert_eq!(b, block(9, 5000, None)),
            other => panic!("expected block, got {other:?}"),
        }
        assert!(matches!(
            tier.get(BlockKey::new(2, 10)).expect("get"),
            ReadOutcome::Missing
        ));
    }

    #[test]
    fn checksum_mismatch_is_corrupt_and_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = DiskTier::open(dir.path(), false).expect("open");
        let key = BlockKey::new(3, 99);
        tier.put(key, &block(1, 8192, None)).expect("put");
        // Overwrite the payload behind the meta record's back.
        tier.db
            .put_cf(tier.cf(CF_BLOCKS), key.to_bytes(), vec![2u8; 8192])
            .expect("tamper");
        assert!(matches!(tier.get(key).expect("get"), ReadOutcome::Corrupt));
        assert!(matches!(tier.get(key).expect("get"), ReadOutcome::Missing));
        assert!(tier.scan().expect("scan").is_empty());
    }

    #[test]
    fn meta_record_round_trips() {
        let m = BlockMeta {
            len: 2 << 20,
            checksum: 0xdead_beef,
            parent: Some(u64::MAX),
        };
        assert_eq!(BlockMeta::decode(&m.encode()), Some(m));
        assert_eq!(BlockMeta::decode(&[0u8; 3]), None);
    }
}
