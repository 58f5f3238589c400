//! The disk tier's records read back from RocksDB at start-up and on every
//! read: the 26-byte block meta record and the 12-byte block key.
#![no_main]

use kvtier_cache_server::block::BlockKey;
use kvtier_cache_server::tier::disk::BlockMeta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(meta) = BlockMeta::decode(data) {
        assert_eq!(BlockMeta::decode(&meta.encode()), Some(meta));
    }
    if let Some(key) = BlockKey::from_bytes(data) {
        assert_eq!(key.to_bytes().as_slice(), data);
    }
});
