//! kvtier-process (being written).
