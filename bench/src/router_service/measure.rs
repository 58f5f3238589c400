//! Timing: closed loops of pre-encoded requests against each service, with
//! the service's and the client's CPU time read from /proc around them.
//!
//! Every round measures both services back to back, alternating which goes
//! first, so that both see the same noise. A round counts the calls started
//! after the warm-up and finished before the end; [`summarize`] takes the
//! median rate over rounds and the latency percentiles over every call of
//! every round.
//!
//! Requests go out encoded beforehand and answers come back undecoded (see
//! [`super::codec`]), so the client does the same work for both services.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use prost::Message;
use serde::Serialize;
use tonic::transport::Channel;

use super::client::{dyn_request, kv_request, Http};
use super::codec::{RawCodec, FIND_MATCHES_PATH};
use super::queries::Query;
use super::{Args, Mode};

/// Where the two services answer, and their processes (for CPU time).
pub struct Endpoints {
    /// kvtier-router's gRPC address.
    pub router: String,
    pub router_pid: u32,
    /// Dynamo's indexer HTTP address.
    pub dynamo: SocketAddr,
    pub dynamo_pid: u32,
}

/// One service's figures for one mode, over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub qps: f64,
    /// CPU time of the service process per answered query, in µs.
    pub cpu_us_per_query: f64,
    /// CPU time of the benchmark's client per answered query, in µs.
    pub client_cpu_us_per_query: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub queries: usize,
    pub errors: usize,
}

/// One timed measurement.
pub struct Round {
    pub qps: f64,
    /// Latencies in microseconds.
    lat: Vec<u32>,
    errors: usize,
    /// Calls answered, warm-up included.
    calls: usize,
    /// CPU seconds the service process used meanwhile.
    cpu_s: Option<f64>,
    /// CPU seconds this (client) process used meanwhile.
    client_cpu_s: Option<f64>,
}

/// Every round of one mode: kvtier's, Dynamo's and the per-round rate ratios.
pub struct Rounds {
    pub kvtier: Vec<Round>,
    pub dynamo: Vec<Round>,
    pub ratios: Vec<f64>,
}

/// CPU seconds (user + system) of process `pid` so far, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// The median of per-round figures (NaN when there are none).
pub fn median(v: &[f64]) -> f64 {
    kvtier_testkit::stats::median(v).unwrap_or(f64::NAN)
}

/// Median rate over rounds; percentiles over every latency of every round.
pub fn summarize(rounds: &[Round]) -> Measured {
    let mut lat_us: Vec<u32> = rounds.iter().flat_map(|r| r.lat.iter().copied()).collect();
    lat_us.sort_unstable();
    // Nearest rank by ceiling (sample ⌈n·p⌉ of n), as this table always had;
    // testkit's percentile takes ⌊n·p⌋ + 1, one sample higher at round n·p.
    let pct = |p: f64| {
        if lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((lat_us.len() as f64 * p).ceil() as usize).clamp(1, lat_us.len()) - 1;
        lat_us[i] as f64 / 1000.0
    };
    let calls: usize = rounds.iter().map(|r| r.calls).sum();
    let per_query = |cpu: Option<f64>| cpu.map_or(f64::NAN, |c| c * 1e6 / calls.max(1) as f64);
    Measured {
        cpu_us_per_query: per_query(rounds.iter().map(|r| r.cpu_s).sum()),
        client_cpu_us_per_query: per_query(rounds.iter().map(|r| r.client_cpu_s).sum()),
        qps: median(&rounds.iter().map(|r| r.qps).collect::<Vec<_>>()),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        queries: lat_us.len(),
        errors: rounds.iter().map(|r| r.errors).sum(),
    }
}

/// `--rounds` rounds of `mode`, both services in each, alternating which goes first.
pub async fn rounds(args: &Args, at: &Endpoints, queries: &[Query], mode: Mode) -> Result<Rounds> {
    let (mut kv_rounds, mut dyn_rounds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let (k, d) = if round % 2 == 0 {
            let k = measure_kv(args, &at.router, at.router_pid, queries, mode).await?;
            (
                k,
                measure_dyn(args, at.dynamo, at.dynamo_pid, queries, mode).await?,
            )
        } else {
            let d = measure_dyn(args, at.dynamo, at.dynamo_pid, queries, mode).await?;
            (
                measure_kv(args, &at.router, at.router_pid, queries, mode).await?,
                d,
            )
        };
        eprintln!(
            "{} round {round}: kvtier {:.0} q/s, Dynamo {:.0} q/s, ratio {:.2}",
            mode.name(),
            k.qps,
            d.qps,
            k.qps / d.qps
        );
        ratios.push(k.qps / d.qps);
        kv_rounds.push(k);
        dyn_rounds.push(d);
    }
    Ok(Rounds {
        kvtier: kv_rounds,
        dynamo: dyn_rounds,
        ratios,
    })
}

/// Runs `concurrency` closed loops for warm-up + duration; returns the
/// latencies of the calls started after the warm-up and finished before the end.
async fn closed_loops<S, F, Fut>(args: &Args, slots: Vec<S>, call: F) -> Result<Round>
where
    S: Send + 'static,
    F: Fn(S, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (S, Result<()>)> + Send,
{
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup_s);
    let end = warm_end + Duration::from_secs_f64(args.duration_s);
    let n = slots.len();
    let mut tasks = Vec::new();
    for (k, slot) in slots.into_iter().enumerate() {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut slot = Some(slot);
            let (mut lat, mut errors, mut calls) = (Vec::new(), 0usize, 0usize);
            let mut i = k;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let (s, r) = call(slot.take().expect("slot"), i).await;
                slot = Some(s);
                let t1 = Instant::now();
                match r {
                    Ok(()) if t0 >= warm_end && t1 <= end => {
                        calls += 1;
                        lat.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32)
                    }
                    Ok(()) => calls += 1,
                    Err(_) => errors += 1,
                }
                i += n;
            }
            (lat, errors, calls)
        }));
    }
    let (mut lat, mut errors, mut calls) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, e, c) = t.await?;
        lat.extend(l);
        errors += e;
        calls += c;
    }
    Ok(Round {
        qps: lat.len() as f64 / args.duration_s,
        lat,
        errors,
        calls,
        cpu_s: None,
        client_cpu_s: None,
    })
}

async fn measure_kv(
    args: &Args,
    addr: &str,
    pid: u32,
    queries: &[Query],
    mode: Mode,
) -> Result<Round> {
    let reqs: Arc<Vec<Bytes>> = Arc::new(
        queries
            .iter()
            .map(|q| Bytes::from(kv_request(q, mode).encode_to_vec()))
            .collect(),
    );
    let mut slots = Vec::new();
    for _ in 0..args.concurrency {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        slots.push(tonic::client::Grpc::new(channel));
    }
    let (cpu0, me0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let mut round = closed_loops(args, slots, move |mut grpc, i| {
        let reqs = reqs.clone();
        async move {
            let body = reqs[i % reqs.len()].clone();
            let r = async {
                grpc.ready()
                    .await
                    .map_err(|e| anyhow!("gRPC channel: {e}"))?;
                grpc.unary(
                    tonic::Request::new(body),
                    tonic::codegen::http::uri::PathAndQuery::from_static(FIND_MATCHES_PATH),
                    RawCodec,
                )
                .await?;
                anyhow::Ok(())
            }
            .await;
            (grpc, r)
        }
    })
    .await?;
    round.cpu_s = cpu0.zip(cpu_seconds(pid)).map(|(a, b)| b - a);
    round.client_cpu_s = me0.zip(cpu_seconds(std::process::id())).map(|(a, b)| b - a);
    Ok(round)
}

async fn measure_dyn(
    args: &Args,
    addr: SocketAddr,
    pid: u32,
    queries: &[Query],
    mode: Mode,
) -> Result<Round> {
    let reqs: Arc<Vec<(&'static str, Bytes)>> = Arc::new(
        queries
            .iter()
            .map(|q| dyn_request(q, mode))
            .collect::<Result<_>>()?,
    );
    let mut slots = Vec::new();
    for _ in 0..args.concurrency {
        slots.push(Http::connect(addr).await?);
    }
    let (cpu0, me0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let mut round = closed_loops(args, slots, move |mut http, i| {
        let reqs = reqs.clone();
        async move {
            let (path, body) = reqs[i % reqs.len()].clone();
            let r = match http.call("POST", path, body).await {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => {
                    Err(anyhow!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
                }
                Err(e) => Err(e),
            };
            (http, r)
        }
    })
    .await?;
    round.cpu_s = cpu0.zip(cpu_seconds(pid)).map(|(a, b)| b - a);
    round.client_cpu_s = me0.zip(cpu_seconds(std::process::id())).map(|(a, b)| b - a);
    Ok(round)
}
