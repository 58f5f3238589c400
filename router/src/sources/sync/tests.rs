use super::*;

fn wev(id: u64, epoch: u64, kind: WorkerEventKind, hashes: &[u64]) -> WorkerEvent {
    WorkerEvent {
        event_id: id,
        epoch,
        worker_id: "w".into(),
        kind: kind as i32,
        hashes: hashes.to_vec(),
        parent_hash: None,
        parents: Vec::new(),
        medium: "GPU".into(),
    }
}

fn snapshot(id: u64, epoch: u64, blocks: &[(u64, u64)]) -> WorkerEvent {
    let mut e = wev(id, epoch, WorkerEventKind::Snapshot, &[]);
    e.hashes = blocks.iter().map(|b| b.0).collect();
    e.parents = blocks.iter().map(|b| b.1).collect();
    e
}

#[test]
fn chains_put_parents_first_and_group_runs() {
    // tree: 1 -> 2 -> 3, 2 -> 4; 9 is a root; listed children first
    let blocks = [
        (4, Some(2)),
        (3, Some(2)),
        (2, Some(1)),
        (9, None),
        (1, None),
    ];
    let chains = chains_parents_first(&blocks);
    assert_eq!(
        chains,
        vec![(None, vec![9]), (None, vec![1, 2, 4]), (Some(2), vec![3]),]
    );
    // a parent not in the set stays the chain's parent
    assert_eq!(
        chains_parents_first(&[(6, Some(5)), (7, Some(6))]),
        vec![(Some(5), vec![6, 7])]
    );
    // every block exactly once, even with a cycle
    let cyc = chains_parents_first(&[(1, Some(2)), (2, Some(1))]);
    let mut all: Vec<u64> = cyc.into_iter().flat_map(|(_, c)| c).collect();
    all.sort_unstable();
    assert_eq!(all, vec![1, 2]);
}

#[test]
fn worker_snapshot_then_gap_free_events_apply() {
    let mut s = WorkerSync::new("w");
    assert_eq!(s.resume_from(), 0);
    let snap = snapshot(5, 7, &[(20, 10), (10, 0)]);
    assert_eq!(
        s.on_event(&snap),
        WorkerStep::Replace(vec![(None, vec![10, 20])])
    );
    assert_eq!((s.epoch(), s.last_id(), s.resume_from()), (Some(7), 5, 6));
    let mut stored = wev(6, 7, WorkerEventKind::Stored, &[30, 31]);
    stored.parent_hash = Some(20);
    assert_eq!(
        s.on_event(&stored),
        WorkerStep::Stored {
            parent: Some(20),
            hashes: &[30, 31]
        }
    );
    let removed = wev(7, 7, WorkerEventKind::Removed, &[31]);
    assert_eq!(s.on_event(&removed), WorkerStep::Removed(&[31]));
    assert_eq!(
        s.on_event(&wev(8, 7, WorkerEventKind::Cleared, &[])),
        WorkerStep::Cleared
    );
    // a duplicate is skipped
    assert_eq!(s.on_event(&removed), WorkerStep::Skip);
    assert_eq!(s.last_id(), 8);
}

#[test]
fn worker_gap_epoch_change_and_missing_baseline_resync() {
    let mut s = WorkerSync::new("w");
    let early = wev(3, 7, WorkerEventKind::Stored, &[1]);
    assert_eq!(
        s.on_event(&early),
        WorkerStep::Resync(ResyncReason::NoBaseline(3))
    );
    s.on_event(&snapshot(2, 7, &[]));
    assert_eq!(
        s.on_event(&wev(4, 7, WorkerEventKind::Stored, &[1])),
        WorkerStep::Resync(ResyncReason::Gap {
            expected: 3,
            got: 4
        })
    );
    assert_eq!(s.resume_from(), 0, "a resync starts from a snapshot");
    s.on_event(&snapshot(4, 7, &[]));
    assert_eq!(
        s.on_event(&wev(1, 8, WorkerEventKind::Stored, &[1])),
        WorkerStep::Resync(ResyncReason::EpochChanged { old: 7, new: 8 })
    );
    assert_eq!(s.resume_from(), 0);
    // a mid-stream snapshot (the agent's answer to a lagging subscriber) replaces
    s.on_event(&snapshot(4, 7, &[]));
    assert_eq!(
        s.on_event(&snapshot(90, 7, &[(1, 0)])),
        WorkerStep::Replace(vec![(None, vec![1])])
    );
    assert_eq!(s.last_id(), 90);
}

#[test]
fn worker_events_of_another_worker_are_refused() {
    let mut s = WorkerSync::new("configured");
    let snap = snapshot(1, 1, &[(1, 0)]);
    let step = s.on_event(&snap);
    assert!(
        matches!(&step, WorkerStep::Refuse(m) if m.contains("\"w\"") && m.contains("configured")),
        "{step:?}"
    );
    assert_eq!(s.epoch(), None, "nothing was taken from a refused event");
}

fn cev(id: u64, epoch: u64, kind: EventKind, hash: u64, tier: Tier) -> CacheEvent {
    CacheEvent {
        event_id: id,
        epoch,
        kind: kind as i32,
        namespace: "ns".into(),
        hash,
        tier: tier as i32,
        parent_hash: None,
    }
}

#[test]
fn cache_snapshot_is_buffered_until_synced_then_live_events_apply() {
    let mut s = CacheSync::new("ns");
    s.begin_snapshot();
    let mut child = cev(4, 3, EventKind::Stored, 2, Tier::Disk);
    child.parent_hash = Some(1);
    assert_eq!(s.on_event(&child), CacheStep::Skip);
    assert_eq!(
        s.on_event(&cev(4, 3, EventKind::Stored, 1, Tier::Host)),
        CacheStep::Skip
    );
    assert_eq!(
        s.on_event(&cev(4, 3, EventKind::Synced, 0, Tier::None)),
        CacheStep::Replace(vec![(1, None, Tier::Host), (2, Some(1), Tier::Disk)])
    );
    assert_eq!((s.epoch(), s.last_id()), (Some(3), 4));
    assert_eq!(
        s.on_event(&cev(5, 3, EventKind::Moved, 1, Tier::Disk)),
        CacheStep::Set((1, None, Tier::Disk))
    );
    assert_eq!(
        s.on_event(&cev(6, 3, EventKind::Removed, 2, Tier::None)),
        CacheStep::Set((2, None, Tier::None))
    );
    assert_eq!(
        s.on_event(&cev(6, 3, EventKind::Removed, 2, Tier::None)),
        CacheStep::Skip
    );
    let mut other = cev(7, 3, EventKind::Stored, 9, Tier::Host);
    other.namespace = "other".into();
    assert_eq!(s.on_event(&other), CacheStep::Skip);
}

#[test]
fn cache_gap_and_epoch_change_resync() {
    let mut s = CacheSync::new("ns");
    assert_eq!(
        s.on_event(&cev(1, 3, EventKind::Stored, 1, Tier::Host)),
        CacheStep::Resync(ResyncReason::NoBaseline(1))
    );
    s.begin_snapshot();
    s.on_event(&cev(0, 3, EventKind::Synced, 0, Tier::None));
    assert_eq!(
        s.on_event(&cev(2, 3, EventKind::Stored, 1, Tier::Host)),
        CacheStep::Resync(ResyncReason::Gap {
            expected: 1,
            got: 2
        })
    );
    s.begin_snapshot();
    s.on_event(&cev(9, 3, EventKind::Synced, 0, Tier::None));
    assert_eq!(
        s.on_event(&cev(10, 4, EventKind::Stored, 1, Tier::Host)),
        CacheStep::Resync(ResyncReason::EpochChanged { old: 3, new: 4 })
    );
}
