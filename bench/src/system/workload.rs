//! The replay plan: which calls, in which order, when, for which agent.
//!
//! Built from the policy replay's trace readers (kv-cache-tester sessions,
//! Mooncake jsonl) or from a small synthetic agentic workload. Times are
//! trace milliseconds; the runner divides them by `--speed`.

use std::path::Path;

use anyhow::Result;

use kvtier_policy::CallEnd;

use crate::replay::trace::{Trace, NO_AGENT};
use crate::replay::{kvct, mooncake};

/// One call of the plan.
#[derive(Debug, Clone)]
pub struct Call {
    /// Session index (kv-cache-tester file order; Mooncake: the request).
    pub session: u32,
    /// Agent key, or None (Mooncake: no agent hints).
    pub agent: Option<u32>,
    /// Parent agent, for sub-agents.
    pub parent: Option<u32>,
    /// When to send it, trace ms from the replay start (gaps capped).
    pub at_ms: u64,
    /// Least idle time after the previous call of the same agent has ended
    /// (its think/tool time, capped), trace ms.
    pub think_ms: u64,
    /// The previous call of the same agent (index into [`Plan::calls`]).
    pub prev: Option<usize>,
    /// Whether it is its agent's last call in the plan (the agent then ends).
    pub last_of_agent: bool,
    /// Trace block ids of its context, in prefix order.
    pub blocks: Vec<u32>,
    /// The traced call ended with a tool call (the simulated worker is asked
    /// to end its answer the same way, so the router's hints carry it).
    pub tool_call: bool,
}

/// What the system replay sends.
#[derive(Debug, Default)]
pub struct Plan {
    /// Description for the report.
    pub name: String,
    /// Sessions (or independent requests) it contains.
    pub sessions: usize,
    /// Calls, in send order (by `at_ms`, ties by session and position).
    pub calls: Vec<Call>,
}

/// How to cut a trace down to a run of a few minutes.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// First N sessions (Mooncake: ignored).
    pub sessions: Option<usize>,
    /// First N calls of each session (Mooncake: of the whole file).
    pub max_calls: Option<usize>,
    /// Longest idle gap kept, trace seconds.
    pub max_gap_s: f64,
    /// Session k starts k·S trace seconds after the first.
    pub stagger_s: f64,
}

fn root(trace: &Trace, mut a: u32) -> u32 {
    while let Some(p) = trace.agents[a as usize].parent {
        a = p;
    }
    a
}

/// Builds the plan of a trace path (a kv-cache-tester directory or a Mooncake file).
pub fn from_path(path: &Path, shape: Shape) -> Result<Plan> {
    if path.is_dir() {
        let trace = kvct::load(path, 0.0, shape.sessions, 2, &|| {})?;
        Ok(from_sessions(
            &trace,
            shape,
            &format!("kv-cache-tester {}", path.display()),
        ))
    } else {
        let trace = mooncake::load(path)?;
        Ok(from_mooncake(
            &trace,
            shape,
            &format!("mooncake {}", path.display()),
        ))
    }
}

/// Sessions of a kv-cache-tester trace loaded with stagger 0 (so request
/// times are session-relative).
pub fn from_sessions(trace: &Trace, shape: Shape, name: &str) -> Plan {
    // Group requests by session (root agent), keeping trace order.
    let mut roots: Vec<u32> = Vec::new();
    let mut session_of_root = std::collections::HashMap::new();
    let mut per_session: Vec<Vec<usize>> = Vec::new();
    for (i, r) in trace.requests.iter().enumerate() {
        let root = root(trace, r.agent);
        let s = *session_of_root.entry(root).or_insert_with(|| {
            roots.push(root);
            per_session.push(Vec::new());
            per_session.len() - 1
        });
        per_session[s].push(i);
    }
    // Session order = file order = root agent order.
    let mut order: Vec<usize> = (0..roots.len()).collect();
    order.sort_by_key(|&s| roots[s]);
    let cap = (shape.max_gap_s * 1000.0).max(0.0) as u64;
    let stagger = (shape.stagger_s * 1000.0).max(0.0) as u64;
    let mut calls: Vec<(u64, u32, u32, Call, usize)> = Vec::new();
    for (k, &s) in order.iter().enumerate() {
        let reqs = &per_session[s];
        let n = shape.max_calls.map_or(reqs.len(), |m| m.min(reqs.len()));
        let mut t_prev_raw = trace.requests[reqs[0]].time_ms;
        let mut t = 0u64;
        for (pos, &i) in reqs[..n].iter().enumerate() {
            let r = &trace.requests[i];
            t += r.time_ms.saturating_sub(t_prev_raw).min(cap);
            t_prev_raw = r.time_ms;
            calls.push((
                stagger * k as u64 + t,
                k as u32,
                pos as u32,
                Call {
                    session: k as u32,
                    agent: (r.agent != NO_AGENT).then_some(r.agent),
                    parent: trace.agents[r.agent as usize].parent,
                    at_ms: stagger * k as u64 + t,
                    think_ms: 0,
                    prev: None,
                    last_of_agent: false,
                    blocks: trace.blocks_of(i).to_vec(),
                    tool_call: r.stop == CallEnd::ToolCall,
                },
                i,
            ));
        }
    }
    calls.sort_by_key(|c| (c.0, c.1, c.2));
    // Previous call per agent; think time = this call's trace time minus the
    // previous call's answer time (capped).
    let mut last: std::collections::HashMap<u32, usize> = Default::default();
    let mut raw: Vec<usize> = Vec::with_capacity(calls.len());
    let mut out: Vec<Call> = Vec::with_capacity(calls.len());
    for (_, _, _, mut call, i) in calls {
        if let Some(a) = call.agent {
            if let Some(&p) = last.get(&a) {
                call.prev = Some(p);
                let prev = &trace.requests[raw[p]];
                call.think_ms = trace.requests[i]
                    .time_ms
                    .saturating_sub(prev.answered_ms)
                    .min(cap);
            }
            last.insert(a, out.len());
        }
        raw.push(i);
        out.push(call);
    }
    for (_, &j) in last.iter() {
        out[j].last_of_agent = true;
    }
    Plan {
        name: name.to_string(),
        sessions: order.len(),
        calls: out,
    }
}

/// A Mooncake trace: independent requests at their timestamps (gaps capped).
pub fn from_mooncake(trace: &Trace, shape: Shape, name: &str) -> Plan {
    let n = shape
        .max_calls
        .map_or(trace.requests.len(), |m| m.min(trace.requests.len()));
    let cap = (shape.max_gap_s * 1000.0).max(0.0) as u64;
    let mut t = 0u64;
    let mut prev_raw = trace.requests.first().map_or(0, |r| r.time_ms);
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let r = &trace.requests[i];
        t += r.time_ms.saturating_sub(prev_raw).min(cap);
        prev_raw = r.time_ms;
        calls.push(Call {
            session: i as u32,
            agent: None,
            parent: None,
            at_ms: t,
            think_ms: 0,
            prev: None,
            last_of_agent: false,
            blocks: trace.blocks_of(i).to_vec(),
            tool_call: false,
        });
    }
    Plan {
        name: name.to_string(),
        sessions: n,
        calls,
    }
}

/// A small synthetic agentic workload: `sessions` sessions of `calls` calls;
/// each call re-sends the session's context plus `grow` new blocks (the first
/// call has `base` blocks), `think_ms` after the previous answer; session k
/// starts at k·`stagger_ms`. No blocks are shared between sessions.
pub fn synthetic(
    sessions: usize,
    calls: usize,
    base: usize,
    grow: usize,
    think_ms: u64,
    stagger_ms: u64,
) -> Plan {
    let per_session = base + grow * calls.saturating_sub(1);
    let mut all = Vec::new();
    for s in 0..sessions {
        let first = (s * per_session) as u32;
        for c in 0..calls {
            let len = base + grow * c;
            all.push(Call {
                session: s as u32,
                agent: Some(s as u32),
                parent: None,
                at_ms: s as u64 * stagger_ms + c as u64 * think_ms,
                think_ms,
                prev: None,
                last_of_agent: c + 1 == calls,
                blocks: (first..first + len as u32).collect(),
                // An agentic loop: tool calls until the session's last call.
                tool_call: c + 1 < calls,
            });
        }
    }
    all.sort_by_key(|c| (c.at_ms, c.session));
    let mut last: std::collections::HashMap<u32, usize> = Default::default();
    for (j, call) in all.iter_mut().enumerate() {
        let a = call.agent.unwrap_or(0);
        call.prev = last.get(&a).copied();
        last.insert(a, j);
    }
    Plan {
        name: format!("synthetic ({sessions} sessions x {calls} calls, {base}+{grow} blocks)"),
        sessions,
        calls: all,
    }
}

impl Plan {
    /// Σ blocks over calls: the denominator of the block-weighted hit rate.
    pub fn total_blocks(&self) -> u64 {
        self.calls.iter().map(|c| c.blocks.len() as u64).sum()
    }

    /// Distinct blocks.
    pub fn unique_blocks(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        for c in &self.calls {
            seen.extend(c.blocks.iter().copied());
        }
        seen.len()
    }

    /// Ideal (infinite-cache) hit rate in [0, 1], as the traces README defines
    /// it: in send order, a call's hit is the number of its leading blocks
    /// that some earlier call contained.
    pub fn ideal(&self) -> f64 {
        let mut seen = std::collections::HashSet::new();
        let mut hits = 0u64;
        for c in &self.calls {
            hits += c.blocks.iter().take_while(|b| seen.contains(*b)).count() as u64;
            seen.extend(c.blocks.iter().copied());
        }
        hits as f64 / self.total_blocks().max(1) as f64
    }

    /// Largest context of any call, in blocks.
    pub fn max_blocks(&self) -> usize {
        self.calls.iter().map(|c| c.blocks.len()).max().unwrap_or(0)
    }

    /// Agents (sessions' main agents and sub-agents).
    pub fn agents(&self) -> usize {
        let mut a = std::collections::HashSet::new();
        for c in &self.calls {
            if let Some(x) = c.agent {
                a.insert(x);
            }
        }
        a.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_plan_chains_calls_and_has_the_expected_ideal() {
        let p = synthetic(2, 3, 4, 2, 1000, 500);
        assert_eq!(p.calls.len(), 6);
        // Per session: blocks 4 + 6 + 8 = 18, hits 0 + 4 + 6 = 10.
        assert!((p.ideal() - 20.0 / 36.0).abs() < 1e-9);
        for (j, c) in p.calls.iter().enumerate() {
            if let Some(prev) = c.prev {
                assert!(prev < j);
                assert_eq!(p.calls[prev].session, c.session);
                assert!(p.calls[prev].blocks.len() < c.blocks.len());
            }
        }
        assert_eq!(p.calls.iter().filter(|c| c.last_of_agent).count(), 2);
    }

    #[test]
    fn sessions_are_cut_gaps_capped_and_think_times_kept() {
        let json = br#"{"requests": [
            {"t": 0, "hash_ids": [1, 2], "stop": "tool_use", "api_time": 1.0},
            {"t": 5, "hash_ids": [1, 2, 3], "think_time": 4.0, "stop": "end_turn", "api_time": 1.0},
            {"type": "subagent", "t": 6, "requests": [
                {"t": 0, "hash_ids": [1, 9], "api_time": 0.5}]},
            {"t": 1000, "hash_ids": [1, 2, 3, 4], "think_time": 994.0}
        ]}"#;
        let s = kvct::parse_session(json).unwrap();
        let trace = kvct::assemble(vec![s], 0.0, Path::new("x"));
        let shape = Shape {
            sessions: None,
            max_calls: None,
            max_gap_s: 60.0,
            stagger_s: 0.0,
        };
        let p = from_sessions(&trace, shape, "t");
        assert_eq!(p.calls.len(), 4);
        let at: Vec<u64> = p.calls.iter().map(|c| c.at_ms).collect();
        assert_eq!(
            at,
            vec![0, 5000, 6000, 66_000],
            "the 994 s gap is capped to 60 s"
        );
        assert_eq!(p.calls[1].think_ms, 4000);
        assert_eq!(p.calls[1].prev, Some(0));
        assert_eq!(p.calls[2].parent, Some(p.calls[0].agent.unwrap()));
        assert_eq!(p.calls[2].prev, None, "a sub-agent is its own chain");
        assert_eq!(p.calls[3].prev, Some(1));
        assert_eq!(p.calls[3].think_ms, 60_000);
        assert!(p.calls[2].last_of_agent && p.calls[3].last_of_agent);
        // Ideal: 0 + 2 + 1 + 3 hits of 2 + 3 + 2 + 4 blocks.
        assert!((p.ideal() - 6.0 / 11.0).abs() < 1e-9);
        let cut = from_sessions(
            &trace,
            Shape {
                max_calls: Some(2),
                ..shape
            },
            "t",
        );
        assert_eq!(cut.calls.len(), 2);
        assert!(cut.calls[1].last_of_agent);
    }
}
