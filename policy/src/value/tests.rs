use std::collections::HashMap;

use super::*;
use crate::forecast::{AgentGaps, Gap};

fn info() -> BlockInfo<u64> {
    BlockInfo {
        parent: None,
        bytes: 1,
    }
}

fn fixed_cfg() -> ValueConfig {
    ValueConfig {
        adaptive_horizon: 0.0,
        ..ValueConfig::default()
    }
}

fn answer(ended: CallEnd) -> Answer {
    Answer {
        ended,
        ..Answer::default()
    }
}

/// Inserts `keys` and reports them as `agent`'s call context.
fn call(p: &mut ValuePolicy<u64>, agent: AgentId, keys: &[u64], now: u64) {
    for &k in keys.iter().rev() {
        p.on_insert(k, Tier::Host, info(), now);
    }
    p.on_agent_call(agent, keys, now);
}

fn drain(p: &mut ValuePolicy<u64>, tier: Tier, now: u64) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(v) = p.victim(tier, now) {
        p.on_remove(v);
        out.push(v);
    }
    out
}

#[test]
fn ended_agents_go_first_and_shared_blocks_keep_live_value() {
    let mut p = ValuePolicy::new(fixed_cfg());
    call(&mut p, 1, &[1, 2, 3], 0);
    call(&mut p, 2, &[1, 2, 10, 11], 1);
    p.on_agent_answered(1, &answer(CallEnd::ToolCall), 2);
    p.on_agent_answered(2, &answer(CallEnd::EndOfTurn), 3);
    p.on_agent_end(2, 4);
    // 10 and 11 only agent 2 held: ended, tail first. 1 and 2 pass to agent 1.
    assert_eq!(p.victim(Tier::Host, 5), Some(11));
    assert_eq!(drain(&mut p, Tier::Host, 5), vec![11, 10, 3, 2, 1]);
}

#[test]
fn stale_branches_go_before_live_contexts() {
    let mut p = ValuePolicy::new(fixed_cfg());
    call(&mut p, 1, &[1, 2, 3], 0);
    call(&mut p, 2, &[20, 21], 1);
    // Agent 1's context forks after block 1: 2 and 3 are stale.
    call(&mut p, 1, &[1, 4, 5], 2);
    assert_eq!(drain(&mut p, Tier::Host, 3)[..2], [2, 3]);
}

#[test]
fn agent_expected_back_latest_loses_blocks_first_tail_first() {
    let mut p = ValuePolicy::new(fixed_cfg());
    // Teach the forecaster: tool calls come back in ~5 s, turns in ~10 min.
    for i in 0..20u64 {
        let t = i * 1_000_000;
        call(&mut p, 100, &[1000], t);
        p.on_agent_answered(100, &answer(CallEnd::ToolCall), t + 10);
        call(&mut p, 100, &[1000], t + 5_010);
        p.on_agent_answered(100, &answer(CallEnd::EndOfTurn), t + 5_020);
        call(&mut p, 100, &[1000], t + 605_020);
    }
    p.on_agent_end(100, 30_000_000);
    drain(&mut p, Tier::Host, 30_000_000);
    let t = 30_000_000;
    call(&mut p, 1, &[1, 2, 3], t);
    call(&mut p, 2, &[4, 5, 6], t + 1);
    call(&mut p, 3, &[7, 8], t + 2);
    p.on_agent_answered(1, &answer(CallEnd::ToolCall), t + 10);
    p.on_agent_answered(2, &answer(CallEnd::EndOfTurn), t + 11);
    // After an end of turn, agent 2 is not expected for minutes. Agent 3 is
    // in flight: its call-to-call gaps mix both kinds, so it ranks between.
    assert_eq!(
        drain(&mut p, Tier::Host, t + 1_000),
        vec![6, 5, 4, 8, 7, 3, 2, 1]
    );
}

#[test]
fn keep_warm_and_pins_outrank_everyone() {
    let mut p = ValuePolicy::new(fixed_cfg());
    call(&mut p, 1, &[1], 0);
    call(&mut p, 2, &[2], 1);
    call(&mut p, 3, &[3], 2);
    p.on_agent_answered(
        1,
        &Answer {
            ended: CallEnd::EndOfTurn,
            pin: true,
            ..Answer::default()
        },
        3,
    );
    p.on_agent_answered(
        2,
        &Answer {
            ended: CallEnd::EndOfTurn,
            keep_warm_ms: Some(1_000),
            ..Answer::default()
        },
        4,
    );
    p.on_agent_answered(3, &answer(CallEnd::ToolCall), 5);
    assert_eq!(p.victim(Tier::Host, 10), Some(3));
    p.on_remove(3);
    assert_eq!(p.victim(Tier::Host, 10), Some(2));
    // Once the keep-warm TTL passed, agent 2 is ordinary again (and 1 stays pinned).
    call(&mut p, 3, &[3], 2_000);
    assert_eq!(p.victim(Tier::Host, 2_000), Some(2));
}

#[test]
fn priority_scales_value() {
    let mut p = ValuePolicy::new(fixed_cfg());
    let high = AgentSpec {
        priority: 8,
        ..AgentSpec::default()
    };
    p.on_agent_register(1, &high, 0);
    call(&mut p, 1, &[1], 0);
    call(&mut p, 2, &[2], 0);
    p.on_agent_answered(1, &answer(CallEnd::EndOfTurn), 1);
    p.on_agent_answered(2, &answer(CallEnd::EndOfTurn), 1);
    assert_eq!(p.victim(Tier::Host, 2), Some(2));
}

#[test]
fn tiers_are_separate_orders() {
    let mut p = ValuePolicy::new(fixed_cfg());
    call(&mut p, 1, &[1, 2, 3], 0);
    p.on_move(3, Tier::Disk, 1);
    assert_eq!(p.len(Tier::Host), 2);
    assert_eq!(p.len(Tier::Disk), 1);
    assert_eq!(p.victim(Tier::Host, 2), Some(2));
    assert_eq!(p.victim(Tier::Disk, 2), Some(3));
    assert_eq!(p.victim(Tier::Gpu, 2), None);
    // Demote the rest; the disk order stays tail first within the agent.
    p.on_move(2, Tier::Disk, 3);
    p.on_move(1, Tier::Disk, 4);
    assert!(p.is_empty(Tier::Host));
    assert_eq!(p.victim(Tier::Disk, 5), Some(3));
}

#[test]
fn unhinted_blocks_are_lru_without_learning() {
    let mut p: ValuePolicy<u64> = ValuePolicy::new(ValueConfig {
        reuse_horizon: 0.0,
        ..fixed_cfg()
    });
    for k in 1..=4 {
        p.on_insert(k, Tier::Host, info(), k);
    }
    p.on_hit(1, 5);
    assert_eq!(drain(&mut p, Tier::Host, 6), vec![2, 3, 4, 1]);
}

/// One un-hinted request, as the replay and the server report it: the
/// prefix hit is counted, blocks are touched tail first (each naming the
/// block before it as its parent), then the cache is evicted down to `cap`.
fn request<P: EvictionPolicy<u64>>(
    p: &mut P,
    resident: &mut std::collections::HashSet<u64>,
    ids: &[u64],
    now: u64,
    cap: usize,
) -> usize {
    let hits = ids.iter().take_while(|k| resident.contains(k)).count();
    for (j, &k) in ids.iter().enumerate().rev() {
        if resident.contains(&k) {
            p.on_hit(k, now);
        } else {
            let info = BlockInfo {
                parent: j.checked_sub(1).map(|q| ids[q]),
                bytes: 1,
            };
            p.on_insert(k, Tier::Host, info, now);
            resident.insert(k);
        }
    }
    while resident.len() > cap {
        let v = p
            .victim(Tier::Host, now)
            .expect("a victim while over capacity");
        p.on_remove(v);
        resident.remove(&v);
    }
    hits
}

/// Interleaved conversations: each turn re-reads the conversation's context
/// (a shared root 0, then its full blocks) and appends one full block, that
/// the next turn reads, and a partial last block, that nothing reads again.
fn conversations<P: EvictionPolicy<u64>>(p: &mut P, cap: usize) -> usize {
    let mut resident = std::collections::HashSet::new();
    let mut hits = 0;
    let mut fresh = 1_000_000u64;
    let (convs, turns) = (40u64, 12u64);
    for t in 0..turns {
        for c in 0..convs {
            let mut ids = vec![0];
            ids.extend((0..=t).map(|k| 1 + c * 100 + k));
            for _ in 0..3 {
                fresh += 1;
                ids.push(fresh);
            }
            let now = t * convs + c;
            hits += request(p, &mut resident, &ids, now, cap);
        }
    }
    hits
}

#[test]
fn learned_order_keeps_reused_prefixes_over_dead_leaves() {
    let cfg = ValueConfig {
        reuse_period: 16,
        ..fixed_cfg()
    };
    let cap = 300;
    let learned = conversations(&mut ValuePolicy::<u64>::new(cfg), cap);
    let lru = conversations(&mut crate::Lru::<u64>::new(), cap);
    assert!(learned > lru + lru / 4, "learned {learned} vs LRU {lru}");
}

#[test]
fn an_untrained_model_orders_unhinted_blocks_as_lru() {
    // Fewer inserts than one refresh period: every density is equal.
    let mut p: ValuePolicy<u64> = ValuePolicy::new(fixed_cfg());
    let mut lru = crate::Lru::<u64>::new();
    let (mut rp, mut rl) = Default::default();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for now in 0..300u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A chain under one of 8 roots, 1 to 4 blocks deep.
        let root = x % 8;
        let ids: Vec<u64> = (0..=(x >> 8) % 4).map(|d| root * 10 + d).collect();
        let a = request(&mut p, &mut rp, &ids, now, 10);
        let b = request(&mut lru, &mut rl, &ids, now, 10);
        assert_eq!((a, &rp), (b, &rl), "request {now}");
    }
}

#[test]
fn fan_out_counts_children_that_arrive_before_their_parent() {
    let mut p: ValuePolicy<u64> = ValuePolicy::new(fixed_cfg());
    let mut resident = std::collections::HashSet::new();
    // Tail first: 3 (parent 2) and 2 (parent 1) arrive before their parents.
    request(&mut p, &mut resident, &[1, 2, 3], 0, 100);
    request(&mut p, &mut resident, &[1, 2, 4], 1, 100);
    let children = |p: &ValuePolicy<u64>, k: u64| p.lists.node(p.index[&k]).children;
    assert_eq!(children(&p, 1), 1);
    assert_eq!(children(&p, 2), 2);
    assert_eq!(children(&p, 3), 0);
    assert_eq!(children(&p, 4), 0);
    // 2 was read once more; its class follows reads and fan-out.
    let n = p.lists.node(p.index[&2]);
    assert_eq!((n.hits, n.list), (1, GENERIC + reuse::class(1, 2)));
}

#[test]
fn an_evicted_block_read_again_keeps_its_history() {
    let mut p: ValuePolicy<u64> = ValuePolicy::new(fixed_cfg());
    let mut resident = std::collections::HashSet::new();
    request(&mut p, &mut resident, &[1], 0, 10);
    request(&mut p, &mut resident, &[1], 1, 10);
    assert_eq!(p.lists.node(p.index[&1]).hits, 1);
    p.on_remove(1);
    resident.remove(&1);
    assert_eq!(p.reuse.ghosts(), 1);
    request(&mut p, &mut resident, &[1], 3, 10);
    // Read once, evicted, inserted again: a second read.
    assert_eq!(p.lists.node(p.index[&1]).hits, 2);
    assert_eq!(p.reuse.ghosts(), 0);
}

#[test]
fn ghosts_are_bounded() {
    let mut p: ValuePolicy<u64> = ValuePolicy::new(ValueConfig {
        reuse_max_ghosts: 8,
        ..fixed_cfg()
    });
    let mut resident = std::collections::HashSet::new();
    for k in 0..100 {
        request(&mut p, &mut resident, &[k], k, 4);
        assert!(p.reuse.ghosts() <= 9, "{} ghosts", p.reuse.ghosts());
    }
}

// ---------------------------------------------------------------------------
// Brute-force reference: every operation is a scan over plain maps; the
// victim is found by sorting all candidates. Only ranks are cached, exactly
// when the policy caches them (a very long rerank period, so the policy's
// victim cursor is exercised).

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Ended,
    Stale,
    Generic,
    Agent(AgentId),
}

struct RefBlock {
    class: Class,
    stamp: u64,
    tier: Tier,
    refs: Vec<(AgentId, u32)>,
}

struct RefAgent {
    seq: u32,
    context: Vec<u64>,
    phase: Phase,
    last_call: u64,
    weight: f64,
    gaps: AgentGaps,
    parent: Option<AgentId>,
    /// Rank key as last computed; `None` once the agent's state changed.
    key: Option<(f64, u64)>,
}

struct Reference {
    blocks: HashMap<u64, RefBlock>,
    agents: HashMap<AgentId, RefAgent>,
    forecaster: Forecaster,
    stamp: u64,
    ranking: Vec<AgentId>,
    horizon: u64,
    /// Recompute every key when any agent changed state.
    refresh_all: bool,
}

impl Reference {
    fn new(cfg: &ValueConfig) -> Self {
        Self {
            blocks: HashMap::new(),
            agents: HashMap::new(),
            forecaster: Forecaster::new(cfg.prior_weight, cfg.agent_memory),
            stamp: 0,
            ranking: Vec::new(),
            refresh_all: cfg.full_rerank_on_change,
            horizon: cfg.horizon_ms,
        }
    }

    fn touch(&mut self, key: u64, class: Class) {
        self.stamp += 1;
        let b = self.blocks.get_mut(&key).unwrap();
        b.class = class;
        b.stamp = self.stamp;
    }

    fn agent(&mut self, id: AgentId, now: u64) -> &mut RefAgent {
        self.agents.entry(id).or_insert(RefAgent {
            key: None,
            seq: 0,
            context: Vec::new(),
            phase: Phase::New { since: now },
            last_call: now,
            weight: 1.0,
            gaps: AgentGaps::default(),
            parent: None,
        })
    }

    fn insert(&mut self, key: u64, tier: Tier) {
        if self.blocks.contains_key(&key) {
            self.mv(key, tier);
            self.hit(key);
            return;
        }
        self.blocks.insert(
            key,
            RefBlock {
                class: Class::Generic,
                stamp: 0,
                tier,
                refs: Vec::new(),
            },
        );
        self.touch(key, Class::Generic);
    }

    fn hit(&mut self, key: u64) {
        if let Some(b) = self.blocks.get(&key) {
            if !matches!(b.class, Class::Agent(_)) {
                self.touch(key, Class::Generic);
            }
        }
    }

    fn mv(&mut self, key: u64, tier: Tier) {
        if let Some(b) = self.blocks.get_mut(&key) {
            b.tier = tier;
            let c = b.class;
            self.touch(key, c);
        }
    }

    fn drop_ref(&mut self, key: u64, a: AgentId, keep: Option<u32>, orphan: Class) {
        let Some(b) = self.blocks.get_mut(&key) else {
            return;
        };
        let Some(pos) = b.refs.iter().position(|r| r.0 == a) else {
            return;
        };
        if Some(b.refs[pos].1) == keep {
            return;
        }
        b.refs.remove(pos);
        if b.class == Class::Agent(a) {
            let to = b.refs.last().map_or(orphan, |r| Class::Agent(r.0));
            self.touch(key, to);
        }
    }

    fn call(&mut self, a: AgentId, keys: &[u64], now: u64) {
        let st = self.agent(a, now);
        let phase = st.phase;
        let seq0 = st.seq;
        let last = st.last_call;
        let mut gaps = std::mem::take(&mut st.gaps);
        // Mirror AgentState::learn_gap.
        let fc = &mut self.forecaster;
        if let Phase::Answered { at, end } = phase {
            fc.record(Gap::AfterAnswer(end), now - at, &mut gaps);
        }
        if seq0 > 0 {
            fc.record(Gap::AfterCall, now - last, &mut gaps);
        }
        let st = self.agents.get_mut(&a).unwrap();
        st.gaps = gaps;
        st.seq += 1;
        st.phase = Phase::InFlight { since: now };
        st.last_call = now;
        let seq = st.seq;
        let old = std::mem::take(&mut st.context);
        for &k in keys.iter().rev() {
            let Some(b) = self.blocks.get_mut(&k) else {
                continue;
            };
            match b.refs.iter_mut().find(|r| r.0 == a) {
                Some(r) => r.1 = seq,
                None => b.refs.push((a, seq)),
            }
            self.touch(k, Class::Agent(a));
        }
        for k in old {
            self.drop_ref(k, a, Some(seq), Class::Stale);
        }
        let st = self.agents.get_mut(&a).unwrap();
        st.context = keys.to_vec();
        st.key = None;
    }

    fn answered(&mut self, a: AgentId, ans: &Answer, now: u64) {
        if let Some(st) = self.agents.get_mut(&a) {
            st.phase = Phase::Answered {
                at: now,
                end: ans.ended,
            };
            st.key = None;
        }
    }

    /// Mirror AgentState::learn_never, then end.
    fn expired(&mut self, a: AgentId, now: u64) {
        if let Some(st) = self.agents.get(&a) {
            if let Phase::Answered { end, .. } = st.phase {
                self.forecaster
                    .record_never(Gap::AfterAnswer(end), &st.gaps);
            }
            if st.seq > 0 {
                self.forecaster.record_never(Gap::AfterCall, &st.gaps);
            }
        }
        // Its blocks become un-hinted (most recent), not ended.
        self.end_as(a, now, Class::Generic);
    }

    fn end(&mut self, a: AgentId, now: u64) {
        self.end_as(a, now, Class::Ended);
    }

    fn end_as(&mut self, a: AgentId, now: u64, orphan: Class) {
        let Some(st) = self.agents.remove(&a) else {
            return;
        };
        for &k in st.context.iter().rev() {
            self.drop_ref(k, a, None, orphan);
        }
        let mut left: Vec<(u64, u64)> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.class == Class::Agent(a))
            .map(|(&k, b)| (b.stamp, k))
            .collect();
        left.sort_unstable();
        for (_, k) in left {
            self.touch(k, orphan);
        }
        if let Some(p) = st.parent.and_then(|p| self.agents.get_mut(&p)) {
            if matches!(p.phase, Phase::Answered { .. }) {
                p.phase = Phase::Answered {
                    at: now,
                    end: CallEnd::ToolCall,
                };
                p.key = None;
            }
        }
    }

    /// Recomputes the keys of agents whose state changed (the policy under
    /// test never reaches its periodic full refresh here), then sorts.
    fn rank(&mut self, now: u64) {
        let discount = self.forecaster.discount(self.horizon);
        let changed = self.agents.values().any(|st| st.key.is_none());
        for st in self.agents.values_mut() {
            if st.key.is_some() && !(self.refresh_all && changed) {
                continue;
            }
            let (gap, since) = match st.phase {
                Phase::New { since } | Phase::InFlight { since } => (Gap::AfterCall, since),
                Phase::Answered { at, end } => (Gap::AfterAnswer(end), at),
            };
            let d = self
                .forecaster
                .density(gap, now - since, &discount, &st.gaps);
            st.key = Some((st.weight * d, since));
        }
        let mut keyed: Vec<((f64, u64), AgentId)> = self
            .agents
            .iter()
            .map(|(&id, st)| (st.key.unwrap_or((f64::MAX, u64::MAX)), id))
            .collect();
        keyed.sort_by(|a, b| a.0 .0.total_cmp(&b.0 .0).then(a.0 .1.cmp(&b.0 .1)));
        self.ranking = keyed.into_iter().map(|k| k.1).collect();
    }

    fn victim(&mut self, tier: Tier, now: u64) -> Option<u64> {
        let oldest = |class: Class, blocks: &HashMap<u64, RefBlock>| {
            blocks
                .iter()
                .filter(|(_, b)| b.tier == tier && b.class == class)
                .min_by_key(|(_, b)| b.stamp)
                .map(|(&k, _)| k)
        };
        if let Some(k) =
            oldest(Class::Ended, &self.blocks).or_else(|| oldest(Class::Stale, &self.blocks))
        {
            return Some(k);
        }
        if let Some(k) = oldest(Class::Generic, &self.blocks) {
            return Some(k);
        }
        self.rank(now);
        self.ranking
            .iter()
            .find_map(|&a| oldest(Class::Agent(a), &self.blocks))
    }
}

#[test]
fn matches_brute_force_reference_with_incremental_ranks() {
    check_against_reference(false, 0x2545_f491_4f6c_dd1d);
}

#[test]
fn matches_brute_force_reference_with_full_reranks() {
    check_against_reference(true, 0x9e37_79b9_7f4a_7c15);
}

fn check_against_reference(full_rerank_on_change: bool, seed: u64) {
    // The reference orders un-hinted blocks by plain LRU.
    let cfg = ValueConfig {
        adaptive_horizon: 0.0,
        rerank_ms: u64::MAX / 4,
        full_rerank_on_change,
        reuse_horizon: 0.0,
        ..ValueConfig::default()
    };
    let mut p: ValuePolicy<u64> = ValuePolicy::new(cfg.clone());
    let mut r = Reference::new(&cfg);
    let mut x: u64 = seed;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let tiers = [Tier::Host, Tier::Disk];
    let mut now = 1_000u64;
    for step in 0..6_000 {
        now += 1 + rnd(20_000);
        let agent = rnd(6);
        match rnd(10) {
            0..=3 => {
                // A call: a prefix-chained context, sometimes forked.
                let base = agent * 1_000 + if rnd(5) == 0 { 500 } else { 0 };
                let len = 1 + rnd(12);
                let keys: Vec<u64> = (0..len).map(|i| base + i).collect();
                let tier = tiers[rnd(2) as usize];
                for &k in keys.iter().rev() {
                    p.on_insert(k, tier, info(), now);
                    r.insert(k, tier);
                }
                if rnd(8) != 0 {
                    if agent == 5 && !r.agents.contains_key(&5) {
                        let spec = AgentSpec {
                            parent: Some(4),
                            ..AgentSpec::default()
                        };
                        p.on_agent_register(5, &spec, now);
                        r.agent(5, now).parent = Some(4);
                    }
                    p.on_agent_call(agent, &keys, now);
                    r.call(agent, &keys, now);
                }
            }
            4 | 5 => {
                let ended =
                    [CallEnd::ToolCall, CallEnd::EndOfTurn, CallEnd::Unknown][rnd(3) as usize];
                p.on_agent_answered(agent, &answer(ended), now);
                r.answered(agent, &answer(ended), now);
            }
            6 if rnd(2) == 0 => {
                p.on_agent_end(agent, now);
                r.end(agent, now);
            }
            6 => {
                p.on_agent_expired(agent, now);
                r.expired(agent, now);
            }
            7 => {
                let key = rnd(6) * 1_000 + rnd(14);
                p.on_hit(key, now);
                r.hit(key);
                let tier = tiers[rnd(2) as usize];
                if r.blocks.contains_key(&key) {
                    p.on_move(key, tier, now);
                    r.mv(key, tier);
                }
            }
            _ => {
                // Evict a few from one tier, checking every victim.
                let tier = tiers[rnd(2) as usize];
                for _ in 0..rnd(6) {
                    let want = r.victim(tier, now);
                    let got = p.victim(tier, now);
                    assert_eq!(got, want, "step {step}");
                    let Some(k) = got else { break };
                    p.on_remove(k);
                    r.blocks.remove(&k);
                }
            }
        }
        for t in tiers {
            let n = r.blocks.values().filter(|b| b.tier == t).count();
            assert_eq!(p.len(t), n, "step {step}");
        }
    }
}

/// Teaches `p` that end-of-turn waits last a minute and tool-call waits ten;
/// then 60 agents go silent after an end of turn, each ended by `end`.
fn silent_agents(p: &mut ValuePolicy<u64>, end: fn(&mut ValuePolicy<u64>, AgentId, u64)) -> u64 {
    let mut t = 0;
    for _ in 0..40 {
        call(p, 100, &[1000], t);
        p.on_agent_answered(100, &answer(CallEnd::EndOfTurn), t + 10);
        t += 60_010;
        call(p, 100, &[1000], t);
        p.on_agent_answered(100, &answer(CallEnd::ToolCall), t + 10);
        t += 600_010;
    }
    for a in 200..260 {
        call(p, a, &[a * 10], t);
        p.on_agent_answered(a, &answer(CallEnd::EndOfTurn), t + 10);
        end(p, a, t + 1_800_010);
    }
    p.on_agent_end(100, t);
    drain(p, Tier::Host, t + 1_800_010);
    t + 1_800_010
}

#[test]
fn agents_ended_by_lease_expiry_teach_that_silent_waits_may_never_end() {
    let cfg = ValueConfig {
        horizon_ms: 3_600_000,
        ..fixed_cfg()
    };
    let order = |end: fn(&mut ValuePolicy<u64>, AgentId, u64)| {
        let mut p = ValuePolicy::new(cfg.clone());
        let t = silent_agents(&mut p, end);
        // Agent 1 just ended its turn, agent 2 just called a tool.
        call(&mut p, 1, &[1, 2], t);
        call(&mut p, 2, &[3, 4], t);
        p.on_agent_answered(1, &answer(CallEnd::EndOfTurn), t + 10);
        p.on_agent_answered(2, &answer(CallEnd::ToolCall), t + 10);
        drain(&mut p, Tier::Host, t + 30_000)
    };
    // Ended explicitly, the silent agents teach nothing: the call expected
    // within a minute is kept over the one expected in ten.
    assert_eq!(order(|p, a, now| p.on_agent_end(a, now)), vec![4, 3, 2, 1]);
    // Ended by their leases, they show that most ends of turn are final:
    // the agent that just ended its turn now goes first.
    assert_eq!(
        order(|p, a, now| p.on_agent_expired(a, now)),
        vec![2, 1, 4, 3]
    );
}

#[test]
fn eviction_candidates_list_the_victims_in_order() {
    let mut p = ValuePolicy::new(fixed_cfg());
    call(&mut p, 1, &[1, 2, 3], 0);
    call(&mut p, 2, &[4, 5], 1);
    call(&mut p, 3, &[6, 7], 2);
    call(&mut p, 1, &[1, 8], 3); // 2 and 3 go stale
    p.on_agent_answered(1, &answer(CallEnd::ToolCall), 4);
    p.on_agent_answered(2, &answer(CallEnd::EndOfTurn), 5);
    p.on_agent_end(3, 6); // 6 and 7 ended
    for k in 20..26 {
        p.on_insert(k, Tier::Host, info(), 7); // un-hinted
    }
    p.on_hit(21, 8);
    p.on_move(5, Tier::Disk, 9);
    let listed: Vec<u64> = p
        .eviction_candidates(Tier::Host, 100, None, 10)
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(listed, drain(&mut p, Tier::Host, 10));
    assert_eq!(listed.len(), 13);
    assert_eq!(listed[..4], [7, 6, 2, 3]);
}

#[test]
fn promotion_candidates_go_by_forecast_then_head_first() {
    let mut p = ValuePolicy::new(fixed_cfg());
    call(&mut p, 1, &[1, 2, 3], 0);
    call(&mut p, 2, &[4, 5, 6], 1);
    p.on_agent_answered(1, &answer(CallEnd::EndOfTurn), 2);
    p.on_agent_answered(2, &answer(CallEnd::ToolCall), 3);
    // Everything goes down in eviction order (1's tail first, then 2's).
    let mut order = Vec::new();
    while let Some(v) = p.victim(Tier::Host, 4) {
        p.on_move(v, Tier::Disk, 4);
        order.push(v);
    }
    assert_eq!(order, vec![3, 2, 1, 6, 5, 4]);
    // The tool caller is expected back first: its context, head first.
    let cand = p.promotion_candidates(Tier::Disk, 4, None, 5);
    let keys: Vec<u64> = cand.iter().map(|e| e.0).collect();
    assert_eq!(keys, vec![4, 5, 6, 1]);
    assert!(cand[0].1.cmp_value(&cand[3].1).is_gt());
    // Moved up tail first, the head is again the last to leave.
    for &k in keys[..3].iter().rev() {
        p.on_move(k, Tier::Host, 6);
    }
    assert_eq!(drain(&mut p, Tier::Host, 7), vec![6, 5, 4]);
}

#[test]
fn a_prefetch_round_swaps_a_soon_callers_blocks_for_a_late_callers() {
    use crate::prefetch::plan;
    let mut p = ValuePolicy::new(fixed_cfg());
    call(&mut p, 1, &[1, 2], 0);
    call(&mut p, 2, &[3, 4], 1);
    p.on_agent_answered(1, &answer(CallEnd::ToolCall), 2);
    p.on_agent_answered(2, &answer(CallEnd::EndOfTurn), 3);
    // Agent 1's context went down to disk (tail first, as evicted); agent
    // 2's is on host, which holds 2 blocks.
    p.on_move(2, Tier::Disk, 4);
    p.on_move(1, Tier::Disk, 4);
    let cand = p.promotion_candidates(Tier::Disk, 8, None, 5);
    let vict = p.eviction_candidates(Tier::Host, 8, None, 5);
    let round = plan(&cand, &vict, 0, 8);
    assert_eq!(round.promote, vec![1, 2]);
    assert_eq!(round.demote, vec![4, 3]);
    // With a budget of one block, only the head moves.
    let round = plan(&cand, &vict, 0, 1);
    assert_eq!((round.promote, round.demote), (vec![1], vec![4]));
    // Once agent 1's blocks are up, nothing is worth moving.
    for k in [4, 3] {
        p.on_move(k, Tier::Disk, 6);
    }
    for k in [2, 1] {
        p.on_move(k, Tier::Host, 6);
    }
    let cand = p.promotion_candidates(Tier::Disk, 8, None, 7);
    let vict = p.eviction_candidates(Tier::Host, 8, None, 7);
    assert_eq!(plan(&cand, &vict, 0, 8), crate::Plan::default());
}

#[test]
fn the_trait_names_the_same_candidates_and_an_ended_agent_is_not_wanted() {
    let mut p = ValuePolicy::new(fixed_cfg());
    call(&mut p, 1, &[1, 2], 0);
    call(&mut p, 2, &[3, 4], 1);
    call(&mut p, 1, &[1], 2); // 2 goes stale
    p.on_insert(9, Tier::Host, info(), 3); // un-hinted
    for k in [1, 2, 3, 4, 9] {
        p.on_move(k, Tier::Disk, 4);
    }
    let dyn_p: &mut dyn EvictionPolicy<u64> = &mut p;
    let via_trait = dyn_p.promotion_candidates(Tier::Disk, 8, None, 5);
    let victims = dyn_p.eviction_candidates(Tier::Disk, 8, None, 5);
    assert_eq!(via_trait, p.promotion_candidates(Tier::Disk, 8, None, 5));
    assert_eq!(victims, p.eviction_candidates(Tier::Disk, 8, None, 5));
    let wanted: Vec<u64> = [1, 2, 3, 4, 9]
        .into_iter()
        .filter(|&k| p.wants_prefetch(k))
        .collect();
    assert_eq!(wanted, vec![1, 3, 4]);
    p.on_agent_end(2, 6);
    assert!(!p.wants_prefetch(3) && !p.wants_prefetch(4) && p.wants_prefetch(1));
    // LRU forecasts nothing: no candidates, nothing wanted.
    let mut lru = crate::Lru::new();
    lru.on_insert(1u64, Tier::Disk, info(), 0);
    assert!(lru.promotion_candidates(Tier::Disk, 8, None, 1).is_empty());
    assert!(!lru.wants_prefetch(1));
}

#[test]
fn the_horizon_follows_the_top_tiers_turnover() {
    let hour = 3_600_000;
    let fill_host = |p: &mut ValuePolicy<u64>| {
        for k in 0..100 {
            p.on_insert(k, Tier::Host, info(), hour + k * 100);
        }
    };
    let mut host_only: ValuePolicy<u64> = ValuePolicy::default();
    fill_host(&mut host_only);
    // A large disk tier filled an hour earlier, below the same host tier.
    let mut p: ValuePolicy<u64> = ValuePolicy::default();
    for k in 1_000..11_000 {
        p.on_insert(k, Tier::Disk, info(), 0);
    }
    fill_host(&mut p);
    let h = p.horizon_ms();
    assert_eq!(h, host_only.horizon_ms());
    // Moves into host count as inflow: host turns over faster.
    let now = hour + 9_900;
    for k in 1_000..1_100 {
        p.on_move(k, Tier::Host, now);
    }
    for k in 0..100 {
        p.on_move(k, Tier::Disk, now);
    }
    assert!(p.horizon_ms() < h);
    // With host empty, the slow disk's own turnover rules.
    for k in 1_000..1_100 {
        p.on_move(k, Tier::Disk, now);
    }
    assert!(p.horizon_ms() > 10 * h);
}

#[test]
fn an_expired_agents_blocks_wait_after_stale_branches_an_ended_agents_go_first() {
    let order = |expire: bool| {
        let mut p = ValuePolicy::new(fixed_cfg());
        call(&mut p, 1, &[1, 2, 3], 0);
        call(&mut p, 2, &[10, 11], 1);
        call(&mut p, 2, &[10, 12], 2); // 11 is a stale branch
        p.on_agent_answered(1, &answer(CallEnd::EndOfTurn), 3);
        if expire {
            p.on_agent_expired(1, 1_800_003);
        } else {
            p.on_agent_end(1, 3);
        }
        drain(&mut p, Tier::Host, 1_800_004)
    };
    // Ended: dead, first out, tail first.
    assert_eq!(order(false), vec![3, 2, 1, 11, 12, 10]);
    // Expired: it may come back, so its context waits with the un-hinted
    // blocks (tail first), after stale branches and before live contexts.
    assert_eq!(order(true), vec![11, 3, 2, 1, 12, 10]);
}
