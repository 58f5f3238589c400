//! kvtier-testkit (being written).
