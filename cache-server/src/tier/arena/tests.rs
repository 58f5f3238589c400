use super::*;

fn arena(bytes: u64) -> HostArena {
    HostArena::reserve(bytes, true).expect("reserve")
}

fn offset_of(arena: &HostArena, bytes: &[u8]) -> usize {
    bytes.as_ptr() as usize - arena.region().0 as usize
}

#[test]
fn size_classes_round_up_to_the_slot_alignment() {
    assert_eq!(slot_size(0), SLOT_ALIGN);
    assert_eq!(slot_size(1), SLOT_ALIGN);
    assert_eq!(slot_size(SLOT_ALIGN), SLOT_ALIGN);
    assert_eq!(slot_size(SLOT_ALIGN + 1), 2 * SLOT_ALIGN);
    assert_eq!(slot_size(2 << 20), 2 << 20);
    assert_eq!(slot_size((2 << 20) + 1), (2 << 20) + SLOT_ALIGN);
}

#[test]
fn a_freed_slot_is_reused_by_the_next_block_of_its_class() {
    let a = arena(1 << 20);
    let first = a.copy_in(&[1u8; 1001]).expect("room");
    let first_offset = offset_of(&a, &first);
    let other = a.copy_in(&[2u8; 5000]).expect("room");
    drop(first);
    // Same class (1001 and 1005 both round to 1008): the recycled slot.
    let again = a.copy_in(&[3u8; 1005]).expect("room");
    assert_eq!(offset_of(&a, &again), first_offset);
    assert_eq!(&again[..], &[3u8; 1005][..]);
    // A different class does not take it.
    drop(again);
    let bigger = a.copy_in(&[4u8; 2000]).expect("room");
    assert_ne!(offset_of(&a, &bigger), first_offset);
    assert_eq!(&other[..], &[2u8; 5000][..]);
}

#[test]
fn capacity_is_exact_and_accounted() {
    let slot = 64 << 10;
    let a = arena(4 * slot as u64);
    assert_eq!(a.usage().capacity, 4 * slot);
    let held: Vec<Bytes> = (0..4)
        .map(|i| a.copy_in(&vec![i as u8; slot]).expect("room"))
        .collect();
    assert_eq!(a.usage().live, 4 * slot);
    assert_eq!(a.usage().live_slots, 4);
    assert!(a.alloc(1).is_none(), "a fifth slot fits nowhere");
    let mut held = held;
    held.pop();
    let u = a.usage();
    assert_eq!((u.live, u.recycled, u.live_slots), (3 * slot, slot, 3));
    assert!(a.alloc(slot).is_some());
    // Capacity that is not a multiple of the alignment is rounded down.
    assert_eq!(arena(1003).usage().capacity, 1000);
    assert!(arena(0).alloc(1).is_none());
}

#[test]
fn a_slot_stays_leased_while_any_view_of_it_lives() {
    let a = arena(4096);
    let mut slot = a.alloc(4096).expect("room");
    slot.fill(9);
    let frozen = slot.freeze();
    let view = frozen.slice(100..200);
    drop(frozen);
    assert!(
        a.alloc(64).is_none(),
        "the slot is still read through `view`"
    );
    assert_eq!(&view[..], &[9u8; 100][..]);
    drop(view);
    assert_eq!(a.usage().live, 0);
    assert!(a.alloc(4096).is_some());
}

#[test]
fn recycled_slots_of_other_classes_coalesce_for_a_larger_block() {
    let a = arena(64 << 10);
    let small: Vec<Bytes> = (0..64)
        .map(|_| a.copy_in(&[7u8; 1024]).expect("room"))
        .collect();
    assert!(a.alloc(32 << 10).is_none());
    drop(small);
    // Every 1 KiB slot is recycled in its class; a 64 KiB block needs them
    // merged back into one range.
    let big = a.copy_in(&vec![8u8; 64 << 10]).expect("coalesced room");
    assert_eq!(offset_of(&a, &big), 0);
    assert_eq!(a.usage().recycled, 0);
}

#[test]
fn live_slots_never_alias() {
    // A deterministic shuffle of allocations and frees of mixed sizes; every
    // live slot keeps its own pattern and no two live slots overlap.
    let a = arena(1 << 20);
    let mut live: Vec<(u8, Bytes)> = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for step in 0..4000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) && !live.is_empty() {
            let i = (x as usize / 3) % live.len();
            live.swap_remove(i);
            continue;
        }
        let len = 1 + (x as usize >> 8) % (24 << 10);
        let byte = (step % 251) as u8;
        if let Some(mut slot) = a.alloc(len) {
            slot.fill(byte);
            live.push((byte, slot.freeze()));
        }
        if step % 50 == 0 {
            for (b, bytes) in &live {
                assert!(bytes.iter().all(|v| v == b), "a live slot was overwritten");
            }
        }
        let mut spans: Vec<(usize, usize)> = live
            .iter()
            .map(|(_, b)| {
                let o = offset_of(&a, b);
                (o, o + slot_size(b.len()))
            })
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "slots overlap");
        let used: usize = spans.iter().map(|(s, e)| e - s).sum();
        assert_eq!(a.usage().live, used);
        assert!(used <= a.usage().capacity);
    }
    assert!(live.len() > 10, "the shuffle kept some slots live");
    for (b, bytes) in &live {
        assert!(bytes.iter().all(|v| v == b), "a live slot was overwritten");
    }
}

#[test]
fn owns_only_its_own_region() {
    let a = arena(1 << 16);
    let inside = a.copy_in(b"payload").expect("room");
    assert!(a.owns(&inside));
    assert!(!a.owns(&Bytes::from(vec![1u8; 7])));
    assert!(!arena(1 << 16).owns(&inside));
}

#[test]
fn prefault_makes_the_region_resident() {
    let a = arena(8 << 20);
    assert!(a.setup().prefaulted);
    // mincore: every page of the region is in memory before any slot is used.
    let (base, len) = a.region();
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: base..base+len is our own mapping; vec has one byte per page.
    let rc = unsafe { libc::mincore(base.cast(), len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0);
    assert!(vec.iter().all(|v| v & 1 == 1), "a page is not resident");
}
