//! Reader for Mooncake-format jsonl traces: one request per line with
//! `timestamp` (ms) and global `hash_ids`. No sessions: no agent hints.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};
use kvtier_policy::CallEnd;
use serde::Deserialize;

use super::trace::{Renumber, Request, Trace, NO_AGENT};

#[derive(Deserialize)]
struct Line {
    timestamp: f64,
    hash_ids: Vec<u64>,
}

/// Reads a Mooncake jsonl file; lines in timestamp order, ties in file order.
pub fn load(path: &Path) -> Result<Trace> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse(std::io::BufReader::new(file), &path.display().to_string())
}

/// Parses Mooncake jsonl from `reader`; `name` labels errors and the trace.
pub fn parse(reader: impl BufRead, name: &str) -> Result<Trace> {
    let mut lines = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)
            .with_context(|| format!("{name}:{}: not a Mooncake request", n + 1))?;
        lines.push(l);
    }
    lines.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
    let mut trace = Trace {
        name: format!("mooncake {name}"),
        ..Trace::default()
    };
    let mut renumber = Renumber::default();
    let mut next_id = 0usize;
    for l in &lines {
        let start = trace.blocks.len();
        for &raw in &l.hash_ids {
            let id = renumber.id(raw, &mut next_id);
            trace.blocks.push(id);
        }
        let t = l.timestamp.max(0.0).round() as u64;
        trace.requests.push(Request {
            time_ms: t,
            answered_ms: t,
            start,
            len: l.hash_ids.len() as u32,
            agent: NO_AGENT,
            stop: CallEnd::Unknown,
            last_of_agent: false,
        });
    }
    trace.unique_blocks = next_id;
    Ok(trace)
}
