//! `kvtier-bench system --overload F`: who waits when the workers are full.
//!
//! Two classes of agents drive the fleet in closed loops (send a call, read
//! the whole answer, think, send the next), each call a fresh prompt (no
//! prefix reuse, so capacity is a fixed number):
//!
//! - **main** agents: latency-sensitive (`priority` +4, `latency_sensitivity` 1),
//!   prompts of `--main-blocks` blocks;
//! - **bulk** sub-agents: `priority` −4, `latency_sensitivity` 0, prompts of
//!   `--bulk-blocks` blocks, a `parent_agent_id` naming a main agent.
//!
//! Capacity is prefill-bound (a worker's prefill is serialised, decode is
//! not): `C = workers × prefill_tps / mean prompt tokens` calls/s, the mean
//! weighted by `--bulk-share` (the share of bulk calls in the offered load).
//! An agent that never waited would send one call per `think + s₀` (s₀: its
//! call's unloaded prefill and decode time); the number of agents is chosen
//! so that the offered load, Σ 1 / (think + s₀), is `F × C`.
//!
//! The fleet runs twice with the same agents: the router's admission queue
//! `on`, then `off` (the workers with `--scheduling-policy priority` in both
//! unless `--worker-scheduling fcfs`, so the comparison isolates the
//! router's queue). Calls sent in the first `--warmup-s` seconds are left
//! out; throughput is calls (and prompt + output tokens) answered within
//! the measured window ÷ its length.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use super::fleet::{Fleet, FleetSpec, MODEL};
use super::prompt::{render, BLOCK_TOKENS};
use super::report::quantile;
use super::runner::send;

/// The overload phase's settings.
#[derive(Debug, Clone)]
pub struct Overload {
    /// Offered load ÷ capacity.
    pub factor: f64,
    /// Share of the offered calls that are bulk, in [0, 1].
    pub bulk_share: f64,
    /// Blocks of a main agent's prompt.
    pub main_blocks: u32,
    /// Blocks of a bulk sub-agent's prompt.
    pub bulk_blocks: u32,
    /// Mean think time between an answer and the agent's next call.
    pub think: Duration,
    /// Length of each arm (sending), warm-up included.
    pub duration: Duration,
    /// Left out of the figures at the start of each arm.
    pub warmup: Duration,
    /// Output tokens per call.
    pub osl: u32,
    /// Workers' prefill rate (tokens/s) and decode rate (tokens/s per stream).
    pub prefill_tps: f64,
    /// Decode rate per stream.
    pub decode_tps: f64,
    /// Workers.
    pub workers: usize,
    /// Seed of the think times.
    pub seed: u64,
}

/// A class of agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Latency-sensitive main agents.
    Main,
    /// Bulk sub-agents.
    Bulk,
}

impl Class {
    fn priority(self) -> i32 {
        match self {
            Class::Main => 4,
            Class::Bulk => -4,
        }
    }

    fn sensitivity(self) -> f64 {
        match self {
            Class::Main => 1.0,
            Class::Bulk => 0.0,
        }
    }
}

/// How many agents of each class, and the capacity they are sized against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sizing {
    /// Fleet capacity, calls/s.
    pub capacity_calls_per_s: f64,
    /// Fleet capacity, prompt tokens/s.
    pub capacity_tokens_per_s: f64,
    /// Main agents.
    pub main_agents: usize,
    /// Bulk sub-agents.
    pub bulk_agents: usize,
    /// Offered load of these agents, calls/s (no waiting).
    pub offered_calls_per_s: f64,
}

impl Overload {
    fn blocks(&self, class: Class) -> u32 {
        match class {
            Class::Main => self.main_blocks,
            Class::Bulk => self.bulk_blocks,
        }
    }

    /// Unloaded service time of a call of `class`: prefill, then decode.
    fn service_s(&self, class: Class) -> f64 {
        let tokens = f64::from(self.blocks(class)) * BLOCK_TOKENS as f64;
        let prefill = if self.prefill_tps > 0.0 {
            tokens / self.prefill_tps
        } else {
            0.0
        };
        let decode = if self.decode_tps > 0.0 {
            f64::from(self.osl) / self.decode_tps
        } else {
            0.0
        };
        prefill + decode
    }

    /// The agents for the offered load `factor × capacity` (see the module doc).
    pub fn sizing(&self) -> Sizing {
        let bt = BLOCK_TOKENS as f64;
        let share = self.bulk_share.clamp(0.0, 1.0);
        let mean_tokens = bt
            * (share * f64::from(self.bulk_blocks) + (1.0 - share) * f64::from(self.main_blocks));
        let capacity_tokens = self.workers as f64 * self.prefill_tps;
        let capacity = capacity_tokens / mean_tokens.max(1.0);
        let offered = self.factor * capacity;
        let think = self.think.as_secs_f64();
        // Agents of a class offer one call per think + s₀ each; rounded up,
        // so the offered load is at least factor × capacity.
        let agents = |class: Class, calls: f64| -> usize {
            (calls * (think + self.service_s(class)) - 1e-9).ceil() as usize
        };
        let main_agents = agents(Class::Main, (1.0 - share) * offered);
        let bulk_agents = agents(Class::Bulk, share * offered);
        let per = |class: Class| 1.0 / (think + self.service_s(class)).max(1e-9);
        Sizing {
            capacity_calls_per_s: capacity,
            capacity_tokens_per_s: capacity_tokens,
            main_agents,
            bulk_agents,
            offered_calls_per_s: main_agents as f64 * per(Class::Main)
                + bulk_agents as f64 * per(Class::Bulk),
        }
    }
}

/// One answered (or failed) call.
#[derive(Debug, Clone)]
struct Done {
    class: Class,
    /// Sent, since the arm's start.
    sent: Duration,
    /// Answered, since the arm's start.
    ended: Duration,
    /// The answer's figures, or the error.
    result: Result<Answer, String>,
}

/// What the client saw of an answered call.
#[derive(Debug, Clone, Copy, Default)]
struct Answer {
    ttft_ms: f64,
    /// Prompt + output tokens.
    tokens: u64,
    /// Wait at the router (`x-kvtier-queued-ms`).
    router_ms: f64,
    /// Wait for the worker's prefill slot (`x-kvtier-prefill` queue_ms).
    worker_ms: f64,
}

/// A class's figures in one arm.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClassFigures {
    /// Calls answered (sent after the warm-up).
    pub ok: usize,
    /// Calls that failed (HTTP error, timeout).
    pub failed: usize,
    /// TTFT p50, ms.
    pub ttft_p50_ms: f64,
    /// TTFT p99, ms.
    pub ttft_p99_ms: f64,
    /// Mean wait in the router's queue, ms.
    pub router_wait_mean_ms: f64,
    /// Mean wait for a worker's prefill slot, ms.
    pub worker_wait_mean_ms: f64,
}

/// One arm (router queue on or off).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Arm {
    /// `on` or `off`.
    pub queue: String,
    /// Latency-sensitive main agents.
    pub main: ClassFigures,
    /// Bulk sub-agents.
    pub bulk: ClassFigures,
    /// Calls answered within the measured window ÷ its length.
    pub calls_per_s: f64,
    /// Their prompt + output tokens ÷ the window.
    pub tokens_per_s: f64,
    /// Length of the measured window, s.
    pub window_s: f64,
}

/// Both arms and the conditions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverloadReport {
    /// Agents and capacity.
    pub sizing: Sizing,
    /// Settings as key = value.
    pub settings: Vec<(String, String)>,
    /// The arms, in the order run.
    pub arms: Vec<Arm>,
}

fn body(class: Class, agent: usize, parent: usize, first_block: u32, o: &Overload) -> Vec<u8> {
    let n = o.blocks(class);
    let blocks: Vec<u32> = (first_block..first_block + n).collect();
    let mut hints = json!({
        "agent_id": match class {
            Class::Main => format!("main-{agent}"),
            Class::Bulk => format!("bulk-{agent}"),
        },
        "priority": class.priority(),
        "latency_sensitivity": class.sensitivity(),
        "osl": o.osl,
    });
    if class == Class::Bulk {
        hints["parent_agent_id"] = json!(format!("main-{parent}"));
    }
    let b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": render(&blocks)}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": o.osl,
        "nvext": {"agent_hints": hints},
    });
    serde_json::to_vec(&b).unwrap_or_default()
}

/// Exponential think time of mean `mean` from a splitmix64 state.
fn think(state: &mut u64, mean: Duration) -> Duration {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    mean.mul_f64(-u.ln())
}

/// Drives the agents against the router at `http` for one arm.
async fn drive(http: SocketAddr, o: &Overload, sizing: Sizing) -> Result<Vec<Done>> {
    let o = Arc::new(o.clone());
    let start = Instant::now() + Duration::from_millis(100);
    let stop = start + o.duration;
    // Fresh block ids for every call: agent k takes ids from its own range.
    let per_agent_ids = 1u32 << 20;
    let mut tasks = Vec::new();
    let agents = sizing.main_agents + sizing.bulk_agents;
    for k in 0..agents {
        let (class, idx) = if k < sizing.main_agents {
            (Class::Main, k)
        } else {
            (Class::Bulk, k - sizing.main_agents)
        };
        let o = o.clone();
        let parent = idx % sizing.main_agents.max(1);
        tasks.push(tokio::spawn(async move {
            let mut rng = o.seed ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let mut next_block = k as u32 * per_agent_ids;
            let mut out = Vec::new();
            // Agents start spread over one think time.
            let mut at = start + o.think.mul_f64(k as f64 / agents.max(1) as f64);
            while at < stop {
                tokio::time::sleep_until(at).await;
                let b = body(class, idx, parent, next_block, &o);
                next_block += o.blocks(class);
                let sent = Instant::now();
                let result = tokio::time::timeout(Duration::from_secs(600), send(http, b))
                    .await
                    .map_err(|_| anyhow!("timed out after 600 s"))
                    .and_then(|r| r)
                    .map(|r| Answer {
                        ttft_ms: r.ttft_ms,
                        tokens: r.prompt_tokens + u64::from(o.osl),
                        router_ms: r.router_queued_ms as f64,
                        worker_ms: r.queue_ms as f64,
                    })
                    .map_err(|e| format!("{e:#}"));
                let ended = Instant::now();
                out.push(Done {
                    class,
                    sent: sent.saturating_duration_since(start),
                    ended: ended.saturating_duration_since(start),
                    result,
                });
                at = ended + think(&mut rng, o.think);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    Ok(all)
}

fn figures(done: &[Done], class: Class, warmup: Duration) -> ClassFigures {
    let mine: Vec<&Done> = done
        .iter()
        .filter(|d| d.class == class && d.sent >= warmup)
        .collect();
    let ok: Vec<Answer> = mine
        .iter()
        .filter_map(|d| d.result.as_ref().ok().copied())
        .collect();
    let ttft: Vec<f64> = ok.iter().map(|a| a.ttft_ms).collect();
    let mean = |f: fn(&Answer) -> f64| ok.iter().map(f).sum::<f64>() / ok.len().max(1) as f64;
    ClassFigures {
        ok: ok.len(),
        failed: mine.len() - ok.len(),
        ttft_p50_ms: quantile(&ttft, 0.5),
        ttft_p99_ms: quantile(&ttft, 0.99),
        router_wait_mean_ms: mean(|a| a.router_ms),
        worker_wait_mean_ms: mean(|a| a.worker_ms),
    }
}

/// The arm's figures from its calls (pure).
fn arm(queue: &str, done: &[Done], o: &Overload) -> Arm {
    let window = o.duration.saturating_sub(o.warmup);
    let in_window: Vec<&Done> = done
        .iter()
        .filter(|d| d.result.is_ok() && d.ended >= o.warmup && d.ended <= o.duration)
        .collect();
    let secs = window.as_secs_f64().max(1e-9);
    let tokens: u64 = in_window
        .iter()
        .filter_map(|d| d.result.as_ref().ok().map(|r| r.tokens))
        .sum();
    if let Some(Err(e)) = done.iter().map(|d| &d.result).find(|r| r.is_err()) {
        eprintln!("  (queue {queue}) first failed call: {e}");
    }
    Arm {
        queue: queue.to_string(),
        main: figures(done, Class::Main, o.warmup),
        bulk: figures(done, Class::Bulk, o.warmup),
        calls_per_s: in_window.len() as f64 / secs,
        tokens_per_s: tokens as f64 / secs,
        window_s: secs,
    }
}

/// Runs both arms on fresh fleets; `router_on` and `router_off` are the
/// router's extra flags for each.
pub async fn run(
    spec: &FleetSpec,
    o: &Overload,
    router_on: Vec<String>,
    router_off: Vec<String>,
) -> Result<(Sizing, Vec<Arm>)> {
    let sizing = o.sizing();
    let mut arms = Vec::new();
    for (queue, router_args) in [("on", router_on), ("off", router_off)] {
        eprintln!("running the overload phase, router queue {queue} ...");
        let spec = FleetSpec {
            router_args,
            ..spec.clone()
        };
        let fleet = Fleet::start(&spec, &format!("overload-{queue}"))
            .await
            .with_context(|| format!("starting the fleet (queue {queue})"))?;
        let done = drive(fleet.router_http, o, sizing).await?;
        fleet.stop();
        let a = arm(queue, &done, o);
        eprintln!(
            "  main TTFT p50 {:.0} p99 {:.0} ms, bulk p50 {:.0} p99 {:.0} ms, {:.2} calls/s",
            a.main.ttft_p50_ms,
            a.main.ttft_p99_ms,
            a.bulk.ttft_p50_ms,
            a.bulk.ttft_p99_ms,
            a.calls_per_s
        );
        arms.push(a);
    }
    Ok((sizing, arms))
}

impl OverloadReport {
    /// Markdown: the arms side by side and their ratio (on ÷ off).
    pub fn table(&self) -> String {
        let s = &self.sizing;
        let mut out = format!(
            "capacity {:.2} calls/s ({:.0} prompt tokens/s); {} main + {} bulk agents offer \
             {:.2} calls/s ({:.2}x)\n\n",
            s.capacity_calls_per_s,
            s.capacity_tokens_per_s,
            s.main_agents,
            s.bulk_agents,
            s.offered_calls_per_s,
            s.offered_calls_per_s / s.capacity_calls_per_s.max(1e-9)
        );
        out.push_str(
            "| router queue | main ok/failed | main TTFT p50 ms | main TTFT p99 ms | bulk ok/failed \
             | bulk TTFT p50 ms | bulk TTFT p99 ms | calls/s | tokens/s \
             | main wait router / worker ms | bulk wait router / worker ms |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for a in &self.arms {
            out.push_str(&format!(
                "| {} | {}/{} | {:.1} | {:.1} | {}/{} | {:.1} | {:.1} | {:.2} | {:.0} \
                 | {:.0} / {:.0} | {:.0} / {:.0} |\n",
                a.queue,
                a.main.ok,
                a.main.failed,
                a.main.ttft_p50_ms,
                a.main.ttft_p99_ms,
                a.bulk.ok,
                a.bulk.failed,
                a.bulk.ttft_p50_ms,
                a.bulk.ttft_p99_ms,
                a.calls_per_s,
                a.tokens_per_s,
                a.main.router_wait_mean_ms,
                a.main.worker_wait_mean_ms,
                a.bulk.router_wait_mean_ms,
                a.bulk.worker_wait_mean_ms
            ));
        }
        if let (Some(on), Some(off)) = (
            self.arms.iter().find(|a| a.queue == "on"),
            self.arms.iter().find(|a| a.queue == "off"),
        ) {
            let r = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
            out.push_str(&format!(
                "| on ÷ off | | {:.2} | {:.2} | | {:.2} | {:.2} | {:.3} | {:.3} | | |\n",
                r(on.main.ttft_p50_ms, off.main.ttft_p50_ms),
                r(on.main.ttft_p99_ms, off.main.ttft_p99_ms),
                r(on.bulk.ttft_p50_ms, off.bulk.ttft_p50_ms),
                r(on.bulk.ttft_p99_ms, off.bulk.ttft_p99_ms),
                r(on.calls_per_s, off.calls_per_s),
                r(on.tokens_per_s, off.tokens_per_s)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Overload {
        Overload {
            factor: 1.5,
            bulk_share: 0.75,
            main_blocks: 32,
            bulk_blocks: 64,
            think: Duration::from_secs(2),
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(10),
            osl: 4,
            prefill_tps: 4000.0,
            decode_tps: 1000.0,
            workers: 4,
            seed: 1,
        }
    }

    #[test]
    fn agents_offer_the_asked_multiple_of_capacity() {
        let o = settings();
        let s = o.sizing();
        // Mean prompt: 16 × (0.75 × 64 + 0.25 × 32) = 896 tokens.
        assert!((s.capacity_calls_per_s - 16_000.0 / 896.0).abs() < 1e-9);
        let factor = s.offered_calls_per_s / s.capacity_calls_per_s;
        assert!((1.5..1.6).contains(&factor), "offered {factor}x");
        assert!(s.bulk_agents > 2 * s.main_agents);
    }

    #[test]
    fn think_times_have_the_asked_mean() {
        let mut state = 7;
        let mean = Duration::from_secs(2);
        let n = 20_000;
        let total: f64 = (0..n).map(|_| think(&mut state, mean).as_secs_f64()).sum();
        assert!((total / n as f64 - 2.0).abs() < 0.05);
    }

    fn answer(ttft_ms: f64, tokens: u64) -> Answer {
        Answer {
            ttft_ms,
            tokens,
            router_ms: 1.0,
            worker_ms: 2.0,
        }
    }

    #[test]
    fn figures_leave_out_the_warmup_and_count_the_window() {
        let o = settings();
        let at = |s: u64| Duration::from_secs(s);
        let done = vec![
            // Sent in the warm-up: not in the TTFT figures.
            Done {
                class: Class::Main,
                sent: at(1),
                ended: at(2),
                result: Ok(answer(5000.0, 100)),
            },
            Done {
                class: Class::Main,
                sent: at(20),
                ended: at(21),
                result: Ok(answer(10.0, 100)),
            },
            Done {
                class: Class::Bulk,
                sent: at(30),
                ended: at(31),
                result: Err("HTTP 503".into()),
            },
            // Answered after the window: not in the throughput.
            Done {
                class: Class::Bulk,
                sent: at(55),
                ended: at(65),
                result: Ok(answer(9000.0, 200)),
            },
        ];
        let a = arm("on", &done, &o);
        assert_eq!((a.main.ok, a.main.failed), (1, 0));
        assert_eq!(a.main.ttft_p99_ms, 10.0);
        assert_eq!(
            (a.main.router_wait_mean_ms, a.main.worker_wait_mean_ms),
            (1.0, 2.0)
        );
        assert_eq!((a.bulk.ok, a.bulk.failed), (1, 1));
        assert!((a.calls_per_s - 1.0 / 50.0).abs() < 1e-9);
        assert!((a.tokens_per_s - 100.0 / 50.0).abs() < 1e-9);
    }
}
