//! Correctness before speed: waiting until both indexes have applied every
//! event, then comparing a sample of answers of both services with each other
//! and with the workload's ground truth (decoding both answers, which the
//! timed loops never do).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::ListWorkersRequest;
use serde::Serialize;
use tonic::transport::Channel;

use super::client::{dyn_answer, kv_answer, Http};
use super::queries::Query;
use super::workload::Workload;
use super::{Args, Mode, MODEL};

/// How many of the first `--check` queries each side answered wrongly.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Check {
    pub queries: usize,
    pub kv_vs_truth: usize,
    pub dyn_vs_truth: usize,
    pub kv_vs_dyn: usize,
    pub examples: Vec<String>,
}

impl Check {
    /// The cross-check's line (and up to three mismatches) on stderr.
    pub fn print(&self, mode: Mode) {
        eprintln!(
            "{}: cross-check of {} queries: kvtier≠truth {}, Dynamo≠truth {}, kvtier≠Dynamo {}",
            mode.name(),
            self.queries,
            self.kv_vs_truth,
            self.dyn_vs_truth,
            self.kv_vs_dyn
        );
        for e in &self.examples {
            eprintln!("  {e}");
        }
    }
}

/// Asks both services the first `--check` queries in `mode` and counts the mismatches.
pub async fn cross_check(
    args: &Args,
    kv: &mut RouterServiceClient<Channel>,
    http: &mut Http,
    queries: &[Query],
    mode: Mode,
) -> Result<Check> {
    let mut c = Check::default();
    for (i, q) in queries.iter().take(args.check).enumerate() {
        let a = kv_answer(kv, q, mode, args.workers).await?;
        let b = dyn_answer(http, q, mode, args.workers, args.block_tokens).await?;
        c.queries += 1;
        c.kv_vs_truth += usize::from(a != q.truth);
        c.dyn_vs_truth += usize::from(b != q.truth);
        c.kv_vs_dyn += usize::from(a != b);
        if (a != q.truth || b != q.truth) && c.examples.len() < 3 {
            c.examples.push(format!(
                "query {i} ({} blocks): truth {:?} kvtier {a:?} dynamo {b:?}",
                q.seq.len(),
                q.truth
            ));
        }
    }
    Ok(c)
}

/// Waits until kvtier's index holds every worker's blocks and Dynamo answers
/// the check sample as the ground truth says; returns the seconds each took.
pub async fn catch_up(
    args: &Args,
    kv: &mut RouterServiceClient<Channel>,
    http: &mut Http,
    wl: &Workload,
    queries: &[Query],
) -> Result<(Option<f64>, Option<f64>)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.catchup_timeout_s);
    let want: HashMap<String, u64> = wl
        .present
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("worker-{i}"), s.len() as u64))
        .collect();
    let (mut kv_done, mut dyn_done) = (None, None);
    let mut last_kv = String::new();
    let mut last_dyn = String::new();
    while Instant::now() < deadline && (kv_done.is_none() || dyn_done.is_none()) {
        if kv_done.is_none() {
            let resp = kv
                .list_workers(ListWorkersRequest {
                    model: MODEL.into(),
                })
                .await?
                .into_inner();
            let got: HashMap<String, u64> = resp
                .workers
                .iter()
                .map(|w| (w.worker_id.clone(), w.indexed_blocks))
                .collect();
            if got == want {
                kv_done = Some(started.elapsed().as_secs_f64());
            } else {
                last_kv = format!("indexed blocks {got:?}, want {want:?}");
            }
        }
        if dyn_done.is_none() {
            let mut ok = true;
            for q in queries.iter().take(args.check.max(1)) {
                let got =
                    dyn_answer(http, q, Mode::Tokens, args.workers, args.block_tokens).await?;
                if got != q.truth {
                    ok = false;
                    last_dyn = format!("truth {:?}, dynamo {got:?}", q.truth);
                    break;
                }
            }
            if ok {
                dyn_done = Some(started.elapsed().as_secs_f64());
            }
        }
        if kv_done.is_none() || dyn_done.is_none() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    if kv_done.is_none() {
        eprintln!("WARNING: kvtier's index did not catch up: {last_kv}");
    }
    if dyn_done.is_none() {
        eprintln!("WARNING: Dynamo's index did not catch up: {last_dyn}");
    }
    Ok((kv_done, dyn_done))
}
