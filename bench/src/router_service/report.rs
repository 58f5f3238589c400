//! The results: a Markdown table with the set-up in a paragraph above it
//! (what `bench/RESULTS.md` keeps), and with `--json` the same figures as
//! one JSON object on the last line.

use serde::Serialize;

use super::crosscheck::Check;
use super::measure::Measured;
use super::pinning::Pinning;
use super::Args;

/// One query mode's figures for both services.
#[derive(Debug, Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    pub kvtier: Measured,
    pub dynamo: Measured,
    pub qps_ratio: f64,
    pub round_ratios: Vec<f64>,
    pub check: Check,
}

/// The run's set-up, as the table's paragraph and the JSON object state it.
pub struct Setup<'a> {
    pub args: &'a Args,
    pub sessions: usize,
    pub events: usize,
    /// Blocks resident over all workers at the end.
    pub resident: usize,
    pub queries: usize,
    /// Query length in blocks, mean and max.
    pub q_avg: f64,
    pub q_max: usize,
    /// Dynamo's versions, as the peer script's `--check` prints them.
    pub versions: &'a str,
    pub pinning: Option<&'a Pinning>,
    /// Seconds after the last event until each index was caught up (kvtier, Dynamo).
    pub catch_up: (Option<f64>, Option<f64>),
}

/// Prints the table (and with `--json` the JSON object) on stdout.
pub fn print(setup: &Setup<'_>, results: &[ModeResult]) {
    let args = setup.args;
    let (kv_lag, dyn_lag) = setup.catch_up;
    let mut s = format!(
        "router as a service on loopback: {} workers (kvtier-agent --vllm-events / Dynamo ZMQ \
         listener on the same vLLM-format PUB sockets), block size {}, {} sessions ({} events, \
         {} blocks resident); {} distinct queries of {:.0} blocks on average (max {}), {} in \
         flight, {} rounds of {:.0} s per service (after {:.1} s warm-up each), both services \
         back to back in every round; kvtier FindMatches (gRPC) vs Dynamo's standalone indexer \
         ({}) /query or /query_by_hash (HTTP JSON). q/s: median over rounds; ratio: median of \
         the per-round ratios (min–max); latencies over all rounds; CPU: CPU time per answered \
         query of the service process (and of the benchmark's client); {}\n\n\
         | query by | kvtier q/s | Dynamo q/s | kvtier/Dynamo | kvtier p50 ms | Dynamo p50 ms \
         | kvtier p99 ms | Dynamo p99 ms | kvtier CPU µs/q | Dynamo CPU µs/q | errors kv/dyn \
         | answers ≠ (kv/dyn/each other, of n) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        args.workers,
        args.block_tokens,
        setup.sessions,
        setup.events,
        setup.resident,
        setup.queries,
        setup.q_avg,
        setup.q_max,
        args.concurrency,
        args.rounds.max(1),
        args.duration_s,
        args.warmup_s,
        setup.versions,
        setup.pinning.map_or_else(
            || "client and services share every CPU".to_string(),
            |p| format!(
                "pinned: client on CPUs {:?}, services on CPUs {}",
                p.client, p.services
            )
        )
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | **{:.2}×** ({:.2}–{:.2}) | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} ({:.0}) | {:.0} ({:.0}) | {}/{} | {}/{}/{} of {} |\n",
            r.mode,
            r.kvtier.qps,
            r.dynamo.qps,
            r.qps_ratio,
            r.round_ratios.iter().copied().fold(f64::INFINITY, f64::min),
            r.round_ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            r.kvtier.p50_ms,
            r.dynamo.p50_ms,
            r.kvtier.p99_ms,
            r.dynamo.p99_ms,
            r.kvtier.cpu_us_per_query,
            r.kvtier.client_cpu_us_per_query,
            r.dynamo.cpu_us_per_query,
            r.dynamo.client_cpu_us_per_query,
            r.kvtier.errors,
            r.dynamo.errors,
            r.check.kv_vs_truth,
            r.check.dyn_vs_truth,
            r.check.kv_vs_dyn,
            r.check.queries
        ));
    }
    s.push_str(&format!(
        "\nindex caught up after the last event was published: kvtier {}, Dynamo {}\n",
        kv_lag.map_or("never (see warning)".into(), |s| format!("{s:.2} s")),
        dyn_lag.map_or("never (see warning)".into(), |s| format!("{s:.2} s"))
    ));
    println!("{s}");
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "workers": args.workers,
                "block_tokens": args.block_tokens,
                "sessions": setup.sessions,
                "events": setup.events,
                "resident_blocks": setup.resident,
                "queries": setup.queries,
                "query_blocks_avg": setup.q_avg,
                "query_blocks_max": setup.q_max,
                "concurrency": args.concurrency,
                "duration_s": args.duration_s,
                "rounds": args.rounds.max(1),
                "dynamo": setup.versions,
                "catch_up_s": {"kvtier": kv_lag, "dynamo": dyn_lag},
                "pinned": setup.pinning.map(|p| serde_json::json!({"client": p.client, "services": p.services})),
                "results": results,
            })
        );
    }
}
