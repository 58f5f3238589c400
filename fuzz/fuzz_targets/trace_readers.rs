//! The trace readers of `kvtier-bench replay`: a kv-cache-tester session's JSON
//! (assembled into a trace, sub-agents flattened) and Mooncake jsonl. Traces
//! come from users' files, so a malformed one must be an error, not a crash.
#![no_main]

use std::path::Path;

use kvtier_bench::replay::{kvct, mooncake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(session) = kvct::parse_session(data) {
        let _ = kvct::assemble(vec![session], 60.0, Path::new("fuzz"));
    }
    let _ = mooncake::parse(data, "fuzz");
});
