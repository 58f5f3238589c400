//! A replayable trace: requests in arrival order, each with its block ids
//! renumbered to a dense range, the agent that sent it and what a live server
//! would learn about it (stop reason once answered, last call of its agent).

use kvtier_policy::CallEnd;

/// Marks a request that no agent hint covers (Mooncake).
pub const NO_AGENT: u32 = u32::MAX;

/// One request as the replay sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Arrival on the replay clock (ms).
    pub time_ms: u64,
    /// When the answer (and its stop reason) is known (ms, ≥ `time_ms`).
    pub answered_ms: u64,
    /// Offset of its block ids in [`Trace::blocks`].
    pub start: usize,
    /// Number of block ids (duplicates included).
    pub len: u32,
    /// Replay-wide agent index, or [`NO_AGENT`].
    pub agent: u32,
    /// How the call ended.
    pub stop: CallEnd,
    /// Whether this is its agent's last call (the harness then ends the agent).
    pub last_of_agent: bool,
}

/// An agent of the trace: a session's main agent or one of its sub-agents.
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    /// The spawning agent, for sub-agents.
    pub parent: Option<u32>,
}

/// What the policy-level replay consumes.
#[derive(Debug, Default)]
pub struct Trace {
    /// Short description for tables.
    pub name: String,
    /// Requests in replay order.
    pub requests: Vec<Request>,
    /// All requests' block ids, concatenated.
    pub blocks: Vec<u32>,
    /// Agents, indexed by [`Request::agent`].
    pub agents: Vec<Agent>,
    /// Number of distinct block ids (ids are `0..unique_blocks`).
    pub unique_blocks: usize,
}

/// A time-ordered event of a lifecycle-aware replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The answer to request `i` is known (and, at an agent's last call, the agent ends).
    Answer(u32),
    /// Request `i` arrives.
    Request(u32),
}

impl Trace {
    /// The block ids of request `i`.
    pub fn blocks_of(&self, i: usize) -> &[u32] {
        let r = &self.requests[i];
        &self.blocks[r.start..r.start + r.len as usize]
    }

    /// Σ len(hash_ids): the denominator of the block-weighted hit rate.
    pub fn total_blocks(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Requests and answers merged by time; at equal times an answer comes
    /// before an arrival (it was known by then).
    pub fn events(&self) -> Vec<Event> {
        let mut ev: Vec<(u64, u8, u32)> = Vec::with_capacity(self.requests.len() * 2);
        for (i, r) in self.requests.iter().enumerate() {
            ev.push((r.time_ms, 1, i as u32));
            if r.agent != NO_AGENT {
                // An answer at the arrival instant still follows its own request.
                let kind = if r.answered_ms > r.time_ms { 0 } else { 2 };
                ev.push((r.answered_ms, kind, i as u32));
            }
        }
        ev.sort_by_key(|&(t, kind, i)| (t, kind, i));
        ev.into_iter()
            .map(|(_, kind, i)| {
                if kind == 1 {
                    Event::Request(i)
                } else {
                    Event::Answer(i)
                }
            })
            .collect()
    }
}

/// Maps raw ids of one id scope (a session, or a whole Mooncake file) to the
/// trace's dense range.
#[derive(Debug, Default)]
pub struct Renumber {
    map: std::collections::HashMap<u64, u32>,
}

impl Renumber {
    /// The dense id of `raw`, allocating from `next` when new.
    pub fn id(&mut self, raw: u64, next: &mut usize) -> u32 {
        *self.map.entry(raw).or_insert_with(|| {
            *next += 1;
            (*next - 1) as u32
        })
    }
}
