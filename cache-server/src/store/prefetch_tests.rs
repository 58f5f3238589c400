//! Prefetch on a real store: a small host tier above RocksDB in a tempdir,
//! driven by the value policy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kvtier_policy::{Answer, CallEnd, ValueConfig, ValuePolicy};

use super::*;

const LEN: usize = 1000;

fn block(seed: u64) -> Block {
    let payload: Vec<u8> = (0..LEN)
        .map(|i| (seed.wrapping_mul(131).wrapping_add(i as u64) % 251) as u8)
        .collect();
    Block {
        parent: None,
        payload: Bytes::from(payload),
    }
}

fn key(h: u64) -> BlockKey {
    BlockKey::new(1, h)
}

/// A store whose host tier holds `host_blocks` blocks, disk below it.
fn open(dir: &std::path::Path, host_blocks: u64) -> Arc<TieredStore> {
    let cfg = StoreConfig {
        data_dir: dir.to_path_buf(),
        host_capacity: host_blocks * LEN as u64,
        disk_capacity: 1 << 30,
        host_prefault: false,
        ..StoreConfig::default()
    };
    let policy = ValuePolicy::new(ValueConfig {
        adaptive_horizon: 0.0,
        ..ValueConfig::default()
    });
    TieredStore::open(&cfg, Box::new(policy)).expect("open store")
}

/// One agent call whose context grows block by block (each stored, then
/// hinted, so that it is the agent's context at once and pressure demotes
/// other agents' blocks rather than its own), answered with `ended`.
fn call(store: &TieredStore, agent: u64, hashes: &[u64], ended: CallEnd) {
    let keys: Vec<BlockKey> = hashes.iter().map(|&h| key(h)).collect();
    for (i, &h) in hashes.iter().enumerate() {
        store.put(key(h), block(h)).expect("put");
        store.with_policy(|p, now| p.on_agent_call(agent, &keys[..=i], now));
    }
    store.with_policy(|p, now| {
        p.on_agent_answered(
            agent,
            &Answer {
                ended,
                ..Answer::default()
            },
            now,
        );
    });
}

fn tiers(store: &TieredStore, hashes: &[u64]) -> Vec<Option<Tier>> {
    store.lookup(&hashes.iter().map(|&h| key(h)).collect::<Vec<_>>())
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Agent 1 (a tool call: back soon) has its context [1, 2, 3] on disk; agent
/// 2 (an end of turn: back late) fills the host with [11, 12, 13].
fn soon_caller_on_disk(dir: &std::path::Path) -> Arc<TieredStore> {
    let store = open(dir, 3);
    call(&store, 1, &[1, 2, 3], CallEnd::ToolCall);
    call(&store, 2, &[11, 12, 13], CallEnd::EndOfTurn);
    assert_eq!(tiers(&store, &[1, 2, 3]), vec![Some(Tier::Disk); 3]);
    assert_eq!(tiers(&store, &[11, 12, 13]), vec![Some(Tier::Host); 3]);
    store
}

#[test]
fn a_live_agents_disk_blocks_come_up_in_forecast_order_displacing_lower_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = soon_caller_on_disk(dir.path());
    // One block a round: the head of the soon caller's context first, in
    // place of the late caller's tail.
    let r = store.prefetch_round(1, u64::MAX, None, far());
    assert_eq!((r.planned, r.promoted, r.displaced), (1, 1, 1));
    assert_eq!(
        tiers(&store, &[1, 2, 3]),
        vec![Some(Tier::Host), Some(Tier::Disk), Some(Tier::Disk)]
    );
    assert_eq!(tiers(&store, &[13]), vec![Some(Tier::Disk)]);
    let r = store.prefetch_round(1, u64::MAX, None, far());
    assert_eq!(r.promoted, 1);
    assert_eq!(
        tiers(&store, &[2, 3]),
        vec![Some(Tier::Host), Some(Tier::Disk)]
    );
    let r = store.prefetch_round(8, u64::MAX, None, far());
    assert_eq!((r.promoted, r.bytes, r.displaced), (1, LEN as u64, 1));
    assert_eq!(tiers(&store, &[1, 2, 3]), vec![Some(Tier::Host); 3]);
    assert_eq!(tiers(&store, &[11, 12, 13]), vec![Some(Tier::Disk); 3]);
    // The late caller's blocks are candidates now, but every host block is
    // worth more: nothing moves, round after round.
    for _ in 0..3 {
        let r = store.prefetch_round(8, u64::MAX, None, far());
        assert_eq!((r.planned, r.promoted, r.displaced), (0, 0, 0));
    }
    assert_eq!(tiers(&store, &[1, 2, 3]), vec![Some(Tier::Host); 3]);
    // Every block still reads back with its own bytes.
    for h in [1, 2, 3, 11, 12, 13] {
        assert_eq!(
            store.get(key(h)).expect("get").expect("hit").block,
            block(h)
        );
    }
}

#[test]
fn free_room_is_filled_without_displacing_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 3);
    call(&store, 1, &[1, 2, 3], CallEnd::ToolCall);
    call(&store, 2, &[11, 12, 13], CallEnd::EndOfTurn);
    drop(store);
    // Reopened with a host tier of 6 blocks: only the disk tier survives, so
    // agent 1's blocks are on disk and the host is empty.
    let store = {
        let cfg = StoreConfig {
            data_dir: dir.path().to_path_buf(),
            host_capacity: 6 * LEN as u64,
            disk_capacity: 1 << 30,
            host_prefault: false,
            ..StoreConfig::default()
        };
        TieredStore::open(&cfg, Box::new(ValuePolicy::default())).expect("reopen")
    };
    // The reopened policy knows no agents: nothing is a candidate.
    assert_eq!(store.plan_prefetch(8, None), PrefetchRound::default());
    let keys: Vec<BlockKey> = [1, 2, 3].map(key).to_vec();
    store.with_policy(|p, now| p.on_agent_call(7, &keys, now));
    let r = store.prefetch_round(8, u64::MAX, None, far());
    assert_eq!((r.promoted, r.displaced), (3, 0));
    assert_eq!(tiers(&store, &[1, 2, 3]), vec![Some(Tier::Host); 3]);
}

#[test]
fn nothing_moves_when_the_budget_is_zero_or_spent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = soon_caller_on_disk(dir.path());
    assert_eq!(store.plan_prefetch(0, None), PrefetchRound::default());
    let r = store.prefetch_round(8, 0, None, far());
    assert_eq!(r, PrefetchReport::default());
    // A deadline already passed: the round is planned, nothing moves.
    let r = store.prefetch_round(8, u64::MAX, None, Instant::now());
    assert_eq!((r.planned, r.promoted, r.left), (3, 0, 3));
    assert_eq!(tiers(&store, &[1, 2, 3]), vec![Some(Tier::Disk); 3]);
    // One block's bytes a round: the round stops once they are spent.
    let r = store.prefetch_round(8, LEN as u64, None, far());
    assert_eq!((r.planned, r.promoted, r.left), (3, 1, 2));
    assert_eq!(
        tiers(&store, &[1, 2, 3]),
        vec![Some(Tier::Disk), Some(Tier::Disk), Some(Tier::Host)],
        "moved tail first within the round"
    );
}

#[test]
fn a_get_while_a_move_is_in_flight_is_served_and_cancels_the_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = soon_caller_on_disk(dir.path());
    let mut round = store.plan_prefetch(8, None);
    assert_eq!(round.promote.len(), 3);
    let k = round.promote[0];
    let mut served = None;
    let landing = store.prefetch_one_with(&mut round, k, || {
        // The call arrives between the prefetcher's disk read and its landing.
        served = Some(store.get(k).expect("get").expect("hit"));
    });
    let served = served.expect("the get ran");
    assert_eq!(served.tier, Tier::Disk);
    assert_eq!(served.block, block(k.hash));
    assert_eq!(landing, Landing::Fetched);
    // The client's read promoted it; the bytes are the same from host.
    let again = store.get(k).expect("get").expect("hit");
    assert_eq!((again.tier, again.block), (Tier::Host, block(k.hash)));
    // The rest of the round still lands.
    for k in round.promote.clone().into_iter().skip(1) {
        assert!(matches!(
            store.prefetch_one(&mut round, k),
            Landing::Promoted { .. }
        ));
    }
    assert_eq!(tiers(&store, &[1, 2, 3]), vec![Some(Tier::Host); 3]);
}

#[test]
fn gets_running_alongside_rounds_always_see_their_own_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 8);
    let agents: Vec<Vec<u64>> = (0..6u64)
        .map(|a| (0..4).map(|i| 100 * (a + 1) + i).collect())
        .collect();
    for (a, hashes) in agents.iter().enumerate() {
        let ended = if a % 2 == 0 {
            CallEnd::ToolCall
        } else {
            CallEnd::EndOfTurn
        };
        call(&store, a as u64, hashes, ended);
    }
    let all: Vec<u64> = agents.concat();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let promoted = std::thread::scope(|s| {
        let prefetcher = s.spawn(|| {
            let mut promoted = 0;
            while !stop.load(Ordering::Relaxed) {
                promoted += store.prefetch_round(4, u64::MAX, None, far()).promoted;
                // New calls reorder the agents, so rounds keep moving blocks.
                let a = (promoted % 6) as usize;
                let keys: Vec<BlockKey> = agents[a].iter().map(|&h| key(h)).collect();
                store.with_policy(|p, now| p.on_agent_call(a as u64, &keys, now));
            }
            promoted
        });
        for round in 0..300usize {
            let h = all[(round * 7) % all.len()];
            let hit = store.get(key(h)).expect("get").expect("every block stays");
            assert_eq!(hit.block, block(h), "block {h}");
        }
        stop.store(true, Ordering::Relaxed);
        prefetcher.join().expect("prefetcher")
    });
    assert!(promoted > 0, "the rounds moved blocks meanwhile");
    let usage = store.usage();
    assert!(usage[Tier::Host.index()].used_bytes <= 8 * LEN as u64);
    assert_eq!(
        usage[Tier::Host.index()].blocks + usage[Tier::Disk.index()].blocks,
        all.len() as u64
    );
}

#[test]
fn an_ended_agents_blocks_are_not_promoted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = soon_caller_on_disk(dir.path());
    let mut round = store.plan_prefetch(8, None);
    let k = round.promote[0];
    // The agent ends while its first block is read: that move is cancelled.
    let landing = store.prefetch_one_with(&mut round, k, || {
        store.with_policy(|p, now| p.on_agent_end(1, now));
    });
    assert_eq!(landing, Landing::NotWanted);
    for k in round.promote.clone() {
        assert_eq!(store.prefetch_one(&mut round, k), Landing::NotWanted);
    }
    // And no later round plans them.
    assert_eq!(store.plan_prefetch(8, None), PrefetchRound::default());
    assert_eq!(tiers(&store, &[1, 2, 3]), vec![Some(Tier::Disk); 3]);
    assert_eq!(tiers(&store, &[11, 12, 13]), vec![Some(Tier::Host); 3]);
}

#[test]
fn a_corrupt_disk_block_is_dropped_never_promoted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = soon_caller_on_disk(dir.path());
    store.disk().expect("disk tier").tamper(key(2), &[7u8; LEN]);
    let r = store.prefetch_round(8, u64::MAX, None, far());
    assert_eq!((r.promoted, r.corrupt), (2, 1));
    assert_eq!(
        tiers(&store, &[1, 2, 3]),
        vec![Some(Tier::Host), None, Some(Tier::Host)]
    );
    assert_eq!(store.checksum_failures(), 1);
}

#[test]
fn an_lru_store_plans_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        host_capacity: LEN as u64,
        disk_capacity: 1 << 30,
        host_prefault: false,
        ..StoreConfig::default()
    };
    let store = TieredStore::open(&cfg, Box::new(kvtier_policy::Lru::new())).expect("open");
    for h in 0..4 {
        store.put(key(h), block(h)).expect("put");
    }
    assert_eq!(store.plan_prefetch(8, None), PrefetchRound::default());
}
