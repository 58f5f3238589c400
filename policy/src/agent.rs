//! Agent-level inputs shared by the lifecycle registry and the value policy.

/// Caller-chosen agent identity (for example a hash of the session id).
pub type AgentId = u64;

/// How an agent's call ended, as reported once the call is answered.
///
/// This is the strongest online signal of when the agent calls again: after a
/// tool call the harness runs a tool and calls back within seconds, after an
/// end of turn a person has to answer, which may take minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CallEnd {
    /// Not reported (or the call has not been answered yet).
    #[default]
    Unknown,
    /// The model asked for a tool: the next call usually comes within seconds.
    ToolCall,
    /// The model ended its turn: the next call waits for a person.
    EndOfTurn,
}

impl CallEnd {
    /// Number of variants, for per-kind arrays.
    pub const COUNT: usize = 3;

    /// Index usable for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CallEnd::Unknown => "unknown",
            CallEnd::ToolCall => "tool_call",
            CallEnd::EndOfTurn => "end_of_turn",
        }
    }
}

/// What an agent declares when it registers.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// The agent that spawned this one (sub-agents), if any.
    pub parent: Option<AgentId>,
    /// Relative importance; 0 is normal, each +2 doubles the value of the
    /// agent's blocks and each -2 halves it. Clamped to `-8..=8`.
    pub priority: i32,
    /// 0.0 (batch) to 1.0 (a person is waiting on every token). Raises the
    /// value of the agent's blocks by up to half.
    pub latency_sensitivity: f32,
    /// Tenant / model namespace; pin quotas are per namespace.
    pub namespace: String,
    /// An agent silent for longer than this is ended. Must be > 0.
    pub lease_ms: u64,
}

impl AgentSpec {
    /// Default lease: 30 minutes of silence ends an agent.
    pub const DEFAULT_LEASE_MS: u64 = 30 * 60 * 1000;

    /// A normal-priority, latency-neutral root agent in `namespace` with the default lease.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            parent: None,
            priority: 0,
            latency_sensitivity: 0.0,
            namespace: namespace.into(),
            lease_ms: Self::DEFAULT_LEASE_MS,
        }
    }

    /// Multiplier this agent applies to the value of the blocks it references.
    pub fn weight(&self) -> f64 {
        let p = f64::from(self.priority.clamp(-8, 8)) / 2.0;
        let l = f64::from(self.latency_sensitivity.clamp(0.0, 1.0));
        p.exp2() * (1.0 + 0.5 * l)
    }
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self::new("default")
    }
}

/// What the caller learns once a call is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answer {
    /// How the call ended.
    pub ended: CallEnd,
    /// Keep the agent's latest context warm for this long (cache_control TTL).
    pub keep_warm_ms: Option<u64>,
    /// Pin the agent's latest context until it is unpinned or the agent ends.
    /// Bounded by the namespace's pin quota (checked by the registry).
    pub pin: bool,
}
