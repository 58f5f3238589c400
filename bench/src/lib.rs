//! kvtier-bench as a library: the trace readers and the replay engine, so that
//! fuzz targets and other tools can drive them. The `kvtier-bench` binary
//! (`src/main.rs`) adds the microbenchmarks that start real processes.

pub mod replay;
