//! Reader for kv-cache-tester session directories (`trace_NNNN.json.gz`).
//!
//! Follows the traces README exactly: sessions in file-name order; a session's
//! requests flattened with a sub-agent's requests at `marker.t + inner.t`
//! (recursively), sorted stably by time; session k starts at k·S seconds; all
//! requests sorted by (absolute time, session, position); ids renumbered per
//! session so that sessions never share a block.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kvtier_policy::CallEnd;
use serde::Deserialize;

use super::trace::{Agent, Renumber, Request, Trace};

#[derive(Deserialize)]
struct SessionFile {
    #[serde(default)]
    requests: Vec<RawRequest>,
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    t: f64,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    hash_ids: Vec<u64>,
    #[serde(default)]
    stop: Option<String>,
    #[serde(default)]
    api_time: Option<f64>,
    #[serde(default)]
    think_time: Option<f64>,
    #[serde(default)]
    requests: Vec<RawRequest>,
}

/// One flattened request of a session, before renumbering.
struct Flat {
    t: f64,
    agent: u32,
    ids: Vec<u64>,
    stop: CallEnd,
    api_s: Option<f64>,
    think_s: Option<f64>,
}

/// One session's requests, flattened (sub-agents at marker.t + inner.t), in time order.
pub struct Session {
    requests: Vec<Flat>,
    /// Parent of each session-local agent (agent 0 is the main agent).
    parents: Vec<Option<u32>>,
}

/// The session files of `dir`, in name order.
pub fn session_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("trace_") && n.ends_with(".json.gz"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no trace_NNNN.json.gz files in {}", dir.display());
    }
    Ok(files)
}

fn stop_of(s: Option<&str>) -> CallEnd {
    match s {
        Some("tool_use") => CallEnd::ToolCall,
        Some("end_turn") => CallEnd::EndOfTurn,
        _ => CallEnd::Unknown,
    }
}

fn flatten(reqs: Vec<RawRequest>, offset: f64, agent: u32, s: &mut Session) {
    for r in reqs {
        if r.kind == "subagent" {
            let child = s.parents.len() as u32;
            s.parents.push(Some(agent));
            flatten(r.requests, offset + r.t, child, s);
        } else {
            s.requests.push(Flat {
                t: offset + r.t,
                agent,
                ids: r.hash_ids,
                stop: stop_of(r.stop.as_deref()),
                api_s: r.api_time,
                think_s: r.think_time,
            });
        }
    }
}

fn read_session(path: &Path) -> Result<Session> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(BufReader::new(file))
        .read_to_end(&mut text)
        .with_context(|| format!("decompressing {}", path.display()))?;
    parse_session(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Parses one session file's JSON (already decompressed).
pub fn parse_session(json: &[u8]) -> Result<Session> {
    let parsed: SessionFile = serde_json::from_slice(json)?;
    let mut s = Session {
        requests: Vec::new(),
        parents: vec![None],
    };
    flatten(parsed.requests, 0.0, 0, &mut s);
    // Stable: ties keep file order.
    s.requests.sort_by(|a, b| a.t.total_cmp(&b.t));
    Ok(s)
}

/// Reads up to `limit` sessions of `dir` with `threads` readers; `on_file` is
/// called after each file.
pub fn load(
    dir: &Path,
    stagger_s: f64,
    limit: Option<usize>,
    threads: usize,
    on_file: &(dyn Fn() + Sync),
) -> Result<Trace> {
    let mut files = session_files(dir)?;
    if let Some(n) = limit {
        files.truncate(n);
    }
    let threads = threads.clamp(1, files.len());
    let chunk = files.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Session>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|p| {
                            let s = read_session(p);
                            on_file();
                            s
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("reader thread panicked")))
            .collect()
    });
    let mut sessions = Vec::with_capacity(files.len());
    for p in parts {
        sessions.extend(p?);
    }
    Ok(assemble(sessions, stagger_s, dir))
}

/// Orders the requests of `sessions` (session k starting at k·`stagger_s`)
/// into one trace, renumbering ids per session.
pub fn assemble(sessions: Vec<Session>, stagger_s: f64, dir: &Path) -> Trace {
    // (absolute time s, session, position) for the global order.
    let mut order: Vec<(f64, u32, u32)> = Vec::new();
    for (k, s) in sessions.iter().enumerate() {
        let start = k as f64 * stagger_s;
        for (pos, r) in s.requests.iter().enumerate() {
            order.push((start + r.t, k as u32, pos as u32));
        }
    }
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

    let mut trace = Trace {
        name: format!(
            "kv-cache-tester {} ({} sessions, S={stagger_s}s)",
            dir.display(),
            sessions.len()
        ),
        ..Trace::default()
    };
    // Agents: global index per (session, local agent).
    let mut agent_base = Vec::with_capacity(sessions.len());
    for s in &sessions {
        let base = trace.agents.len() as u32;
        agent_base.push(base);
        trace.agents.extend(s.parents.iter().map(|p| Agent {
            parent: p.map(|p| base + p),
        }));
    }
    let mut renumber: Vec<Renumber> = (0..sessions.len()).map(|_| Renumber::default()).collect();
    let mut next_id = 0usize;
    let ms = |s: f64| (s * 1000.0).round().max(0.0) as u64;
    for &(abs_t, k, pos) in &order {
        let s = &sessions[k as usize];
        let r = &s.requests[pos as usize];
        let start = trace.blocks.len();
        for &raw in &r.ids {
            let id = renumber[k as usize].id(raw, &mut next_id);
            trace.blocks.push(id);
        }
        let time_ms = ms(abs_t);
        trace.requests.push(Request {
            time_ms,
            answered_ms: time_ms,
            start,
            len: r.ids.len() as u32,
            agent: agent_base[k as usize] + r.agent,
            stop: r.stop,
            last_of_agent: false,
        });
    }
    trace.unique_blocks = next_id;
    set_answer_times(&mut trace, &sessions, &order);
    trace
}

/// Answer time: arrival + api_time when known, else the next call of the same
/// agent minus its think time; never after that next call. Marks each agent's
/// last call.
fn set_answer_times(trace: &mut Trace, sessions: &[Session], order: &[(f64, u32, u32)]) {
    let mut next_of: Vec<Option<usize>> = vec![None; trace.requests.len()];
    let mut last_seen: Vec<Option<usize>> = vec![None; trace.agents.len()];
    for i in (0..trace.requests.len()).rev() {
        let a = trace.requests[i].agent as usize;
        next_of[i] = last_seen[a];
        last_seen[a] = Some(i);
    }
    for i in 0..trace.requests.len() {
        let (_, k, pos) = order[i];
        let flat = &sessions[k as usize].requests[pos as usize];
        let t = trace.requests[i].time_ms;
        let next = next_of[i].map(|j| {
            let (_, nk, npos) = order[j];
            (
                trace.requests[j].time_ms,
                sessions[nk as usize].requests[npos as usize].think_s,
            )
        });
        let mut answered = match (flat.api_s, next) {
            (Some(api), _) => t + (api.max(0.0) * 1000.0).round() as u64,
            (None, Some((nt, Some(think)))) => {
                nt.saturating_sub((think.max(0.0) * 1000.0).round() as u64)
            }
            _ => t,
        };
        if let Some((nt, _)) = next {
            answered = answered.min(nt);
        }
        let r = &mut trace.requests[i];
        r.answered_ms = answered.max(t);
        r.last_of_agent = next.is_none();
    }
}
