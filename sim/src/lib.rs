//! kvtier-sim: simulated engine and inference worker (filled in by the move out of worker-agent).
