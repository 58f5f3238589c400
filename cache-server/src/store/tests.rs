use super::*;
use crate::events::StoreEventKind;
use bytes::Bytes;
use kvtier_policy::lru::Lru;

fn config(dir: &std::path::Path, host: u64, disk: u64) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        host_capacity: host,
        disk_capacity: disk,
        ..StoreConfig::default()
    }
}

fn block(seed: u64, len: usize) -> Block {
    let payload: Vec<u8> = (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8)
        .collect();
    Block {
        parent: seed.checked_sub(1),
        payload: Bytes::from(payload),
    }
}

fn open(cfg: &StoreConfig) -> Arc<TieredStore> {
    TieredStore::open(cfg, Box::new(Lru::new())).expect("open store")
}

#[test]
fn host_capacity_is_never_exceeded_and_pressure_demotes_to_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), 10_000, 1 << 30);
    let store = open(&cfg);
    for i in 0..100u64 {
        let len = 500 + (i as usize * 37) % 1500;
        store.put(BlockKey::new(1, i), block(i, len)).expect("put");
        let host = store.usage()[Tier::Host.index()];
        assert!(host.used_bytes <= 10_000, "host tier over capacity");
        assert_eq!(store.host_resident_bytes(), host.used_bytes);
    }
    let usage = store.usage();
    assert!(usage[Tier::Disk.index()].blocks > 0);
    assert_eq!(
        usage[Tier::Host.index()].blocks + usage[Tier::Disk.index()].blocks,
        100
    );
    // every block still reads back with its own bytes
    for i in 0..100u64 {
        let len = 500 + (i as usize * 37) % 1500;
        let hit = store
            .get(BlockKey::new(1, i))
            .expect("get")
            .expect("present");
        assert_eq!(hit.block, block(i, len));
        assert!(store.usage()[Tier::Host.index()].used_bytes <= 10_000);
    }
}

#[test]
fn lru_order_decides_who_is_demoted_and_hits_promote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 3_000, 1 << 20));
    for i in 0..3u64 {
        store.put(BlockKey::new(1, i), block(i, 1000)).expect("put");
    }
    // touch 0 so that 1 is the least recently used
    store.get(BlockKey::new(1, 0)).expect("get");
    store.put(BlockKey::new(1, 3), block(3, 1000)).expect("put");
    let tiers = store.lookup(&[0, 1, 2, 3].map(|h| BlockKey::new(1, h)));
    assert_eq!(
        tiers,
        vec![
            Some(Tier::Host),
            Some(Tier::Disk),
            Some(Tier::Host),
            Some(Tier::Host)
        ]
    );
    // a disk hit is served from disk and then promoted
    let hit = store.get(BlockKey::new(1, 1)).expect("get").expect("hit");
    assert_eq!(hit.tier, Tier::Disk);
    assert_eq!(store.lookup(&[BlockKey::new(1, 1)]), vec![Some(Tier::Host)]);
}

#[test]
fn bottom_tier_drops_and_write_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 2_000, 2_000));
    for i in 0..6u64 {
        let out = store.put(BlockKey::new(1, i), block(i, 1000)).expect("put");
        assert!(!out.already_present);
    }
    let again = store.put(BlockKey::new(1, 5), block(5, 1000)).expect("put");
    assert!(again.already_present);
    let present = store
        .lookup(&(0..6).map(|h| BlockKey::new(1, h)).collect::<Vec<_>>())
        .into_iter()
        .filter(Option::is_some)
        .count();
    assert_eq!(present, 4);
    let usage = store.usage();
    assert!(usage[Tier::Disk.index()].used_bytes <= 2_000);
}

#[test]
fn too_large_block_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 1_000, 2_000));
    let err = store
        .put(BlockKey::new(1, 1), block(1, 5_000))
        .expect_err("too large");
    assert!(matches!(err, StoreError::TooLarge { bytes: 5000, .. }));
}

#[test]
fn restart_serves_blocks_that_were_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), 0, 1 << 30);
    {
        let store = open(&cfg);
        for i in 0..20u64 {
            let out = store.put(BlockKey::new(2, i), block(i, 4096)).expect("put");
            assert_eq!(out.tier, Tier::Disk);
        }
        // no flush: the WAL alone must bring them back
    }
    let store = open(&cfg);
    assert_eq!(store.usage()[Tier::Disk.index()].blocks, 20);
    for i in 0..20u64 {
        let hit = store.get(BlockKey::new(2, i)).expect("get").expect("hit");
        assert_eq!(hit.block, block(i, 4096));
    }
}

#[test]
fn events_have_monotonic_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 1_000, 1 << 20));
    let mut rx = store.subscribe();
    store.put(BlockKey::new(1, 1), block(1, 1000)).expect("put");
    store.put(BlockKey::new(1, 2), block(2, 1000)).expect("put");
    let a = rx.try_recv().expect("event");
    let b = rx.try_recv().expect("event");
    let c = rx.try_recv().expect("event");
    assert_eq!((a.kind, a.tier), (StoreEventKind::Stored, Some(Tier::Host)));
    assert_eq!(
        (b.kind, b.key.hash, b.tier),
        (StoreEventKind::Moved, 1, Some(Tier::Disk))
    );
    assert_eq!(c.kind, StoreEventKind::Stored);
    assert_eq!((b.id, c.id), (a.id + 1, a.id + 2));
}

#[test]
fn snapshot_lists_resident_blocks_consistent_with_event_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    // host holds one 1000-byte block: the second put demotes the first to disk
    let store = open(&config(dir.path(), 1_500, 1 << 20));
    store
        .put(BlockKey::new(1, 10), block(10, 1000))
        .expect("put");
    store
        .put(BlockKey::new(1, 11), block(11, 1000))
        .expect("put");
    store
        .put(BlockKey::new(2, 20), block(20, 400))
        .expect("put");
    let mut snap = store.subscribe_with_snapshot(Some(1));
    let mut blocks = snap.blocks.clone();
    blocks.sort_by_key(|b| b.key.hash);
    assert_eq!(
        blocks
            .iter()
            .map(|b| (b.key, b.tier, b.parent))
            .collect::<Vec<_>>(),
        vec![
            (BlockKey::new(1, 10), Tier::Disk, Some(9)),
            (BlockKey::new(1, 11), Tier::Host, Some(10)),
        ]
    );
    // namespace 1: stored 10, moved 10, stored 11; namespace 2 counts apart
    assert_eq!(snap.last_ids.get(&1), Some(&3));
    assert!(snap.last_ids.get(&2).is_some_and(|&id| id >= 1));
    // the subscription starts right after the snapshot: the next event of
    // namespace 1 has the next id, nothing older is delivered
    store.put(BlockKey::new(1, 12), block(12, 10)).expect("put");
    let mut next_ns1 = None;
    while let Ok(e) = snap.events.try_recv() {
        if e.key.namespace == 1 && next_ns1.is_none() {
            next_ns1 = Some(e.id);
        }
    }
    assert_eq!(next_ns1, Some(4));
    // every namespace when unfiltered
    assert_eq!(store.subscribe_with_snapshot(None).blocks.len(), 4);
}

#[test]
fn shutdown_spill_keeps_the_hottest_memory_blocks_that_fit_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Host holds all 10 blocks; the disk has room for 3 of them.
    let cfg = config(dir.path(), 1 << 20, 3 * 1000 + 500);
    let store = open(&cfg);
    for i in 0..10u64 {
        store.put(BlockKey::new(1, i), block(i, 1000)).expect("put");
    }
    // LRU: 7, 2 and 5 are the most recently used, 5 the hottest.
    for i in [7u64, 2, 5] {
        store
            .get(BlockKey::new(1, i))
            .expect("get")
            .expect("present");
    }
    assert_eq!(store.usage()[Tier::Disk.index()].blocks, 0);
    let report = store.spill_to_disk(std::time::Duration::from_secs(10));
    assert_eq!(
        report,
        SpillReport {
            kept: 3,
            kept_bytes: 3000,
            no_room: 7,
            left: 0,
            failed: 0
        }
    );
    store.flush().expect("flush");
    drop(store);
    // A restart rebuilds the index from the disk tier alone: the hot three are there.
    let reopened = open(&cfg);
    let keys: Vec<BlockKey> = (0..10u64).map(|i| BlockKey::new(1, i)).collect();
    let tiers = reopened.lookup(&keys);
    let kept: Vec<u64> = (0..10u64)
        .filter(|&i| tiers[i as usize].is_some())
        .collect();
    assert_eq!(kept, vec![2, 5, 7]);
    let hit = reopened
        .get(BlockKey::new(1, 5))
        .expect("get")
        .expect("present");
    assert_eq!(hit.block, block(5, 1000));
}

#[test]
fn shutdown_spill_stops_at_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 1 << 20, 1 << 30));
    for i in 0..20u64 {
        store.put(BlockKey::new(1, i), block(i, 100)).expect("put");
    }
    let report = store.spill_to_disk(std::time::Duration::ZERO);
    assert_eq!((report.kept, report.left), (0, 20));
}

#[test]
fn a_payload_received_into_a_host_slot_is_kept_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 3 * 4096, 1 << 20));
    let key = BlockKey::new(1, 7);
    let mut slot = store.try_receive_buffer(4096).expect("free slot");
    slot.fill(5);
    let payload = slot.freeze();
    let ptr = payload.as_ptr();
    let out = store
        .put_owned(
            key,
            Block {
                parent: None,
                payload,
            },
        )
        .expect("put");
    assert_eq!(out.tier, Tier::Host);
    let hit = store.get(key).expect("get").expect("hit");
    assert_eq!(
        hit.block.payload.as_ptr(),
        ptr,
        "no copy between receive and get"
    );
    assert_eq!(store.host_arena_usage().live, 4096);
}

#[test]
fn a_full_arena_makes_room_for_a_receive_by_demoting_in_policy_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 3 * 4096, 1 << 20));
    for i in 0..3u64 {
        store.put(BlockKey::new(1, i), block(i, 4096)).expect("put");
    }
    assert!(store.try_receive_buffer(4096).is_none(), "arena full");
    // Already present: no room is made for it.
    assert!(store.receive_buffer(BlockKey::new(1, 0), 4096).is_none());
    assert_eq!(store.usage()[Tier::Disk.index()].blocks, 0);
    // A new block: the least recently used (block 0) goes to disk.
    let mut slot = store
        .receive_buffer(BlockKey::new(1, 3), 4096)
        .expect("room made");
    slot.fill(1);
    let tiers = store.lookup(&[0, 1, 2].map(|h| BlockKey::new(1, h)));
    assert_eq!(
        tiers,
        vec![Some(Tier::Disk), Some(Tier::Host), Some(Tier::Host)]
    );
    store
        .put_owned(
            BlockKey::new(1, 3),
            Block {
                parent: None,
                payload: slot.freeze(),
            },
        )
        .expect("put");
    let usage = store.usage();
    assert_eq!(usage[Tier::Host.index()].blocks, 3);
    assert_eq!(
        store.host_arena_usage().live as u64,
        usage[Tier::Host.index()].used_bytes
    );
    // The demoted block reads back intact from disk.
    let hit = store.get(BlockKey::new(1, 0)).expect("get").expect("hit");
    assert_eq!(hit.block, block(0, 4096));
}

#[test]
fn arena_fragmentation_demotes_more_rather_than_failing() {
    // Slots of one size fill the arena; a block of another size needs
    // neighbours freed and merged: the put demotes until it fits.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 8 * 1024, 1 << 20));
    for i in 0..8u64 {
        store.put(BlockKey::new(1, i), block(i, 1000)).expect("put");
    }
    let big = BlockKey::new(1, 100);
    let out = store.put(big, block(100, 4000)).expect("put");
    assert_eq!(out.tier, Tier::Host);
    let host = store.usage()[Tier::Host.index()];
    assert!(host.used_bytes <= 8 * 1024);
    assert_eq!(store.host_resident_bytes(), host.used_bytes);
    for i in 0..8u64 {
        let hit = store.get(BlockKey::new(1, i)).expect("get").expect("hit");
        assert_eq!(hit.block, block(i, 1000));
    }
}

#[test]
fn lookup_answers_while_the_lock_is_held_and_follows_every_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path(), 3_000, 1 << 20));
    let keys: Vec<BlockKey> = (0..5u64).map(|h| BlockKey::new(1, h)).collect();
    for (i, key) in keys.iter().enumerate() {
        store.put(*key, block(i as u64, 1000)).expect("put");
    }
    // Five 1000-byte blocks through a 3000-byte host tier: two went to disk.
    let tiers = store.lookup(&keys);
    assert_eq!(tiers.iter().filter(|t| **t == Some(Tier::Disk)).count(), 2);
    assert_eq!(tiers.iter().filter(|t| **t == Some(Tier::Host)).count(), 3);
    // A lookup from another thread while the store's lock is held (as during a
    // put's disk writes or a demotion) answers at once.
    let other = Arc::clone(&store);
    let probe = keys.clone();
    let answered = store.with_policy(|_, _| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(other.lookup(&probe));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
    });
    assert_eq!(
        answered.expect("a lookup waited for the store's lock"),
        tiers
    );
    // A hit on a disk block promotes it (and demotes another): lookups follow.
    let on_disk = keys[tiers
        .iter()
        .position(|t| *t == Some(Tier::Disk))
        .expect("disk")];
    store.get(on_disk).expect("get").expect("present");
    let after = store.lookup(&keys);
    assert_eq!(
        after[keys.iter().position(|k| *k == on_disk).expect("key")],
        Some(Tier::Host)
    );
    assert_eq!(after.iter().filter(|t| **t == Some(Tier::Disk)).count(), 2);
}
