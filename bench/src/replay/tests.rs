//! Tests of the replay pieces on small synthetic traces.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::AtomicU64;

use kvtier_policy::{CallEnd, Lru};

use super::trace::{Event, Request, Trace, NO_AGENT};
use super::{belady, kvct, sim, tiered};

fn trace_of(requests: &[Vec<u32>]) -> Trace {
    let mut t = Trace::default();
    for (i, ids) in requests.iter().enumerate() {
        t.requests.push(Request {
            time_ms: i as u64,
            answered_ms: i as u64,
            start: t.blocks.len(),
            len: ids.len() as u32,
            agent: NO_AGENT,
            stop: CallEnd::Unknown,
            last_of_agent: false,
        });
        t.blocks.extend_from_slice(ids);
    }
    t.unique_blocks = t.blocks.iter().map(|&b| b as usize + 1).max().unwrap_or(0);
    t
}

/// The best prefix-hit total any offline policy can reach, by exhaustive
/// search over which blocks to keep after each request.
fn exhaustive(t: &Trace, cap: usize) -> u64 {
    fn go(
        t: &Trace,
        cap: usize,
        p: usize,
        mask: u32,
        memo: &mut HashMap<(usize, u32), u64>,
    ) -> u64 {
        if p == t.requests.len() {
            return 0;
        }
        if let Some(&v) = memo.get(&(p, mask)) {
            return v;
        }
        let ids = t.blocks_of(p);
        let hits = ids.iter().take_while(|&&id| mask >> id & 1 == 1).count() as u64;
        let full = ids.iter().fold(mask, |m, &id| m | 1 << id);
        let mut best = 0;
        let mut sub = full;
        loop {
            if sub.count_ones() as usize <= cap {
                best = best.max(go(t, cap, p + 1, sub, memo));
            }
            if sub == 0 {
                break;
            }
            sub = (sub - 1) & full;
        }
        memo.insert((p, mask), hits + best);
        hits + best
    }
    go(t, cap, 0, 0, &mut HashMap::new())
}

/// Random prefix-chained requests: root-to-node paths of a random tree.
fn random_chained(seed: u64, nodes: u32, requests: usize) -> Trace {
    let mut x = seed | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let parent: Vec<Option<u32>> = (0..nodes)
        .map(|i| (i > 0 && rnd(4) != 0).then(|| rnd(u64::from(i)) as u32))
        .collect();
    let reqs: Vec<Vec<u32>> = (0..requests)
        .map(|_| {
            let mut path = vec![rnd(u64::from(nodes)) as u32];
            while let Some(p) = parent[*path.last().unwrap_or(&0) as usize] {
                path.push(p);
            }
            path.reverse();
            path
        })
        .collect();
    trace_of(&reqs)
}

#[test]
fn belady_is_the_exact_optimum_on_chained_ids() {
    let progress = AtomicU64::new(0);
    for seed in 1..60u64 {
        let t = random_chained(seed * 7919, 9, 7);
        for cap in 1..5 {
            let b = belady::hits(&t, cap, 1, &progress);
            assert_eq!(b, exhaustive(&t, cap), "seed {seed} cap {cap}");
            let lru = sim::simulate(&t, cap, 1, sim::Lifecycle::Off, Lru::new, &progress);
            assert!(lru.hits <= b);
        }
    }
}

#[test]
fn lru_evicts_a_requests_tail_first() {
    let t = trace_of(&[vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 3], vec![0, 1, 2]]);
    let progress = AtomicU64::new(0);
    // Capacity 2: only the head (0, 1) of each request survives.
    let out = sim::simulate(&t, 2, 1, sim::Lifecycle::Off, Lru::new, &progress);
    assert_eq!(out.hits, 2 + 2 + 2);
    assert_eq!(out.total, 12);
}

#[test]
fn bounded_load_routing_prefers_the_longest_prefix_within_the_bound() {
    let mut res = sim::Residency::new(4);
    res.set(0, 1, true);
    res.set(1, 1, true);
    // Worker 1 holds the prefix and has room under the bound.
    assert_eq!(sim::route(&res, &[0, 1, 2], &[0, 0], 0), 1);
    // Worker 1 is at the bound ceil(1.25·4/2) = 3: worker 0 gets it.
    assert_eq!(sim::route(&res, &[0, 1, 2], &[0, 3], 3), 0);
    // No prefix anywhere: the least loaded wins.
    assert_eq!(sim::route(&res, &[3], &[2, 1], 3), 1);
}

fn write_gz(dir: &std::path::Path, name: &str, json: &str) {
    let f = std::fs::File::create(dir.join(name)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    gz.write_all(json.as_bytes()).unwrap();
    gz.finish().unwrap();
}

#[test]
fn kv_cache_tester_sessions_are_flattened_renumbered_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    write_gz(
        dir.path(),
        "trace_0002.json.gz",
        r#"{"id":"b","requests":[
            {"t":0.0,"type":"n","hash_ids":[1,2],"stop":"tool_use","api_time":2.0},
            {"type":"subagent","t":1.0,"requests":[
                {"t":0.5,"type":"n","hash_ids":[1,9],"stop":"end_turn","api_time":0.2}]},
            {"t":4.0,"type":"n","hash_ids":[1,2,3],"stop":"end_turn","think_time":1.0}]}"#,
    );
    write_gz(
        dir.path(),
        "trace_0001.json.gz",
        r#"{"id":"a","requests":[{"t":0.0,"type":"n","hash_ids":[1,2],"stop":"tool_use"}]}"#,
    );
    std::fs::write(dir.path().join("MANIFEST.tsv"), "ignored").unwrap();
    let t = kvct::load(dir.path(), 10.0, None, 2, &|| {}).unwrap();
    // Session 0 is trace_0001 (name order) at 0 s; session 1 starts at 10 s.
    let times: Vec<u64> = t.requests.iter().map(|r| r.time_ms).collect();
    assert_eq!(times, vec![0, 10_000, 11_500, 14_000]);
    let blocks: Vec<&[u32]> = (0..4).map(|i| t.blocks_of(i)).collect();
    // Ids are per session: session 1's id 1 is not session 0's.
    assert_eq!(blocks, vec![&[0, 1][..], &[2, 3], &[2, 4], &[2, 3, 5]]);
    assert_eq!(t.unique_blocks, 6);
    // Agents: session 0 main (0), session 1 main (1) and its sub-agent (2).
    let agents: Vec<u32> = t.requests.iter().map(|r| r.agent).collect();
    assert_eq!(agents, vec![0, 1, 2, 1]);
    assert_eq!(t.agents[2].parent, Some(1));
    // Answers: api_time when given, clamped to the agent's next call.
    let answered: Vec<u64> = t.requests.iter().map(|r| r.answered_ms).collect();
    assert_eq!(answered, vec![0, 12_000, 11_700, 14_000]);
    let last: Vec<bool> = t.requests.iter().map(|r| r.last_of_agent).collect();
    assert_eq!(last, vec![true, false, true, true]);
    assert_eq!(t.requests[1].stop, CallEnd::ToolCall);
    // An answer at the arrival instant follows its request.
    let ev = t.events();
    let pos = |e: Event| ev.iter().position(|&x| x == e).unwrap();
    assert!(pos(Event::Request(0)) < pos(Event::Answer(0)));
    assert!(pos(Event::Answer(2)) < pos(Event::Answer(1)));
}

#[test]
fn mooncake_lines_are_read_in_timestamp_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    std::fs::write(
        &path,
        "{\"timestamp\": 5, \"input_length\": 600, \"output_length\": 1, \"hash_ids\": [0, 7]}\n\
         {\"timestamp\": 1, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}\n",
    )
    .unwrap();
    let t = super::mooncake::load(&path).unwrap();
    assert_eq!(t.requests[0].time_ms, 1);
    // Ids are renumbered densely in replay order.
    assert_eq!(t.blocks_of(0), &[0]);
    assert_eq!(t.blocks_of(1), &[0, 1]);
    std::fs::write(&path, "not json\n").unwrap();
    let err = super::mooncake::load(&path).unwrap_err();
    assert!(format!("{err:#}").contains(":1:"), "{err:#}");
}

#[test]
fn report_table_json_and_svg() {
    use super::report::{Report, Row};
    let report = Report {
        trace: "kv-cache-tester dir".into(),
        requests: 3,
        blocks: 10,
        unique_blocks: 5,
        ideal: 50.0,
        stagger_s: 0.0,
        workers: 1,
        end_signal: "harness".into(),
        rows: vec![
            Row {
                fraction: 0.01,
                blocks: 1,
                lru: Some(10.0),
                kvtier: Some(15.0),
                belady: Some(20.0),
            },
            Row {
                fraction: 0.1,
                blocks: 5,
                lru: Some(40.0),
                kvtier: None,
                belady: Some(40.0),
            },
        ],
        seconds: 1.0,
    };
    assert_eq!(report.rows[0].gap_closed(), Some(50.0));
    assert_eq!(report.rows[1].gap_closed(), None);
    let table = report.table();
    assert!(
        table.contains("| 0.01 | 1 | 10.00 | 15.00 | 20.00 | 50.0% |"),
        "{table}"
    );
    assert!(
        table.contains("| 0.1 | 5 | 40.00 | - | 40.00 | - |"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["rows"][0]["kvtier"], 15.0);
    let svg = report.svg();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 3);
    assert!(svg.contains("kv-cache-tester: hit rate vs capacity"));
}

/// An LRU that also writes down what it hears about agents' lives, into a log
/// its test keeps (the replay owns its policies).
struct AgentLog {
    lru: Lru<u32>,
    log: std::sync::Arc<std::sync::Mutex<Vec<(&'static str, u64)>>>,
}

impl kvtier_policy::EvictionPolicy<u32> for AgentLog {
    fn name(&self) -> &'static str {
        "agent-log"
    }
    fn on_insert(
        &mut self,
        key: u32,
        tier: kvtier_policy::Tier,
        info: kvtier_policy::BlockInfo<u32>,
        now: u64,
    ) {
        self.lru.on_insert(key, tier, info, now);
    }
    fn on_hit(&mut self, key: u32, now: u64) {
        self.lru.on_hit(key, now);
    }
    fn on_move(&mut self, key: u32, to: kvtier_policy::Tier, now: u64) {
        self.lru.on_move(key, to, now);
    }
    fn on_remove(&mut self, key: u32) {
        self.lru.on_remove(key);
    }
    fn victim(&mut self, tier: kvtier_policy::Tier, now: u64) -> Option<u32> {
        self.lru.victim(tier, now)
    }
    fn len(&self, tier: kvtier_policy::Tier) -> usize {
        self.lru.len(tier)
    }
    fn on_agent_register(&mut self, _agent: u64, _spec: &kvtier_policy::AgentSpec, now: u64) {
        self.log.lock().expect("log").push(("register", now));
    }
    fn on_agent_end(&mut self, _agent: u64, now: u64) {
        self.log.lock().expect("log").push(("end", now));
    }
    fn on_agent_expired(&mut self, _agent: u64, now: u64) {
        self.log.lock().expect("log").push(("expired", now));
    }
}

#[test]
fn lease_mode_ends_silent_agents_by_expiry_and_never_at_the_last_answer() {
    // One agent calls at t=0, 100 and 10,000 (each answered 10 ms later); the
    // last call is marked as its last.
    let mut t = trace_of(&[vec![0, 1], vec![0, 1, 2], vec![0, 1, 2, 3]]);
    t.agents.push(super::trace::Agent { parent: None });
    for (r, at) in t.requests.iter_mut().zip([0u64, 100, 10_000]) {
        r.agent = 0;
        r.time_ms = at;
        r.answered_ms = at + 10;
    }
    t.requests[2].last_of_agent = true;
    let progress = AtomicU64::new(0);
    let events = |lifecycle| {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let make = || AgentLog {
            lru: Lru::new(),
            log: log.clone(),
        };
        sim::simulate(&t, 100, 1, lifecycle, make, &progress);
        let out = log.lock().expect("log").clone();
        out
    };
    // Harness: registered once, ended at the last answer.
    assert_eq!(
        events(sim::Lifecycle::HarnessEnds),
        vec![("register", 0), ("end", 10_010)]
    );
    // Lease 1 s: the silence between t=110 and t=10,000 ends it at 1,110 (as
    // an expiry, which the policy may learn from); the last call registers it
    // again; nothing ends it at its last answer.
    assert_eq!(
        events(sim::Lifecycle::LeaseExpiry { lease_ms: 1_000 }),
        vec![("register", 0), ("expired", 1_110), ("register", 10_000)]
    );
    // A lease longer than every silence: never ended.
    assert_eq!(
        events(sim::Lifecycle::LeaseExpiry { lease_ms: 60_000 }),
        vec![("register", 0)]
    );
}

/// Agent 0 calls at 0 (its turn ends at 1,000), agent 1 calls at 1,500 and
/// ends at its answer at 2,000, agent 0 calls again at `again` with the
/// same context. Host holds 4 blocks: agent 1's call pushes agent 0's
/// context down to disk.
fn two_agents(again: u64) -> Trace {
    let mut t = trace_of(&[vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![0, 1, 2, 3]]);
    t.agents.push(super::trace::Agent { parent: None });
    t.agents.push(super::trace::Agent { parent: None });
    let plan = [(0, 0, 1_000), (1, 1_500, 2_000), (0, again, again + 10)];
    for (r, (agent, at, answered)) in t.requests.iter_mut().zip(plan) {
        r.agent = agent;
        r.time_ms = at;
        r.answered_ms = answered;
        r.stop = CallEnd::EndOfTurn;
    }
    t.requests[1].last_of_agent = true;
    t.requests[2].last_of_agent = true;
    t
}

fn tiered_run(t: &Trace, v: tiered::Variant, budget: usize) -> tiered::Outcome {
    let setup = tiered::Setup {
        host_blocks: 4,
        disk_blocks: None,
        costs: tiered::Costs {
            host_ms: 1.0,
            disk_ms: 10.0,
            recompute_ms: 100.0,
        },
        interval_ms: 1_000,
        budget,
        prefetch_horizon_ms: None,
    };
    let cfg = kvtier_policy::ValueConfig::default();
    let progress = AtomicU64::new(0);
    tiered::simulate(t, &setup, sim::Lifecycle::HarnessEnds, v, &cfg, &progress)
}

#[test]
fn tiered_replay_serves_by_tier_and_prefetch_moves_a_context_up_before_its_call() {
    use tiered::Variant::*;
    let t = two_agents(20_000);
    let hits = |o: &tiered::Outcome| (o.host_hits, o.disk_hits, o.total);
    // Without prefetch agent 0's second call reads its context from disk.
    for v in [Lru, Kvtier] {
        let o = tiered_run(&t, v, 2);
        assert_eq!(hits(&o), (0, 4, 12), "{v:?}");
        assert_eq!(o.ttft_ms, vec![400.0, 400.0, 40.0]);
        assert_eq!((o.prefetched, o.displaced), (0, 0));
    }
    // Once agent 1 ended, prefetch rounds (2 blocks each, landing a round
    // later) swap its ended blocks for agent 0's context.
    let o = tiered_run(&t, KvtierPrefetch, 2);
    assert_eq!(hits(&o), (4, 0, 12));
    assert_eq!(o.ttft_ms[2], 4.0);
    assert_eq!((o.prefetched, o.displaced), (4, 4));
    // No budget, no move.
    let o = tiered_run(&t, KvtierPrefetch, 0);
    assert_eq!((hits(&o), o.prefetched), ((0, 4, 12), 0));
    // The oracle moves exactly the call's disk prefix up, just before it.
    let o = tiered_run(&t, Oracle, 0);
    assert_eq!((hits(&o), o.ttft_ms[2]), ((4, 0, 12), 4.0));
}

#[test]
fn a_call_arriving_mid_prefetch_is_served_from_disk_and_the_landing_skipped() {
    // Agent 0 calls at 3,500: the round at 3,000 planned its head, which
    // lands only at 4,000.
    let o = tiered_run(&two_agents(3_500), tiered::Variant::KvtierPrefetch, 2);
    assert_eq!((o.host_hits, o.disk_hits), (0, 4));
    assert_eq!(o.prefetched, 0);
    assert_eq!(o.displaced, 2);
}
