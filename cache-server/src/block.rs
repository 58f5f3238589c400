//! Block keys, stored blocks and their checksums.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

/// Numeric id of a namespace inside one store (assigned on creation, persisted).
pub type NamespaceId = u32;

/// A block's identity in the store: its namespace and sequence hash. Namespaces
/// are part of every key so that two tenants never share or probe each other's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// Namespace the block belongs to.
    pub namespace: NamespaceId,
    /// Sequence hash of the block (names its whole prefix).
    pub hash: u64,
}

impl BlockKey {
    /// A key from its parts.
    pub fn new(namespace: NamespaceId, hash: u64) -> Self {
        Self { namespace, hash }
    }

    /// Big-endian encoding used as the RocksDB key (sorts by namespace, then hash).
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.namespace.to_be_bytes());
        out[4..].copy_from_slice(&self.hash.to_be_bytes());
        out
    }

    /// Decodes [`BlockKey::to_bytes`]; `None` for a key of the wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 12] = bytes.try_into().ok()?;
        let mut ns = [0u8; 4];
        ns.copy_from_slice(&bytes[..4]);
        let mut hash = [0u8; 8];
        hash.copy_from_slice(&bytes[4..]);
        Some(Self::new(u32::from_be_bytes(ns), u64::from_be_bytes(hash)))
    }
}

impl std::fmt::Display for BlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ns{}:{:#018x}", self.namespace, self.hash)
    }
}

/// Checksum of a block payload (XXH3-64), stored beside every block on disk
/// and verified on every read from it.
pub fn checksum(payload: &[u8]) -> u64 {
    xxh3_64(payload)
}

/// A block as the store holds it: payload plus its place in the prefix tree.
/// `Bytes` so that host-tier hits hand out the payload without copying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Sequence hash of the previous block of the prefix, `None` for a root.
    pub parent: Option<u64>,
    /// The KV bytes.
    pub payload: Bytes,
}

impl Block {
    /// Payload length in bytes.
    pub fn len(&self) -> u64 {
        self.payload.len() as u64
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_and_sorts_by_namespace() {
        let a = BlockKey::new(1, u64::MAX);
        let b = BlockKey::new(2, 0);
        assert_eq!(BlockKey::from_bytes(&a.to_bytes()), Some(a));
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(BlockKey::from_bytes(&[0u8; 5]), None);
    }
}
