//! A prefilled request's answer: the paced decode, streamed or whole, with
//! deterministic output text, and the guard that keeps the request's pool
//! references and load gauges until it ends or its client goes away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use kvtier_prompt::stream::{full_response, StreamWriter, Usage};
use kvtier_prompt::Api;

use super::prefix_cache::Held;
use super::request::SimWorker;
use super::stats::{add, sub};

/// Outcome of a request's prefill, carried into its decode.
pub struct Prefilled {
    pub(super) worker: Arc<SimWorker>,
    /// Response id.
    pub id: String,
    /// The API of the request.
    pub api: Api,
    /// Echoed model name.
    pub model: String,
    /// Output tokens to generate.
    pub osl: u32,
    /// Usage figures (completion_tokens = osl).
    pub usage: Usage,
    /// Full blocks found in the worker's own pool.
    pub hbm_blocks: u64,
    /// Full blocks onboarded from the tier.
    pub onboarded_blocks: u64,
    /// Prompt tokens computed.
    pub computed_tokens: u64,
    /// Time spent waiting for the GPU.
    pub queue_ms: u64,
    /// End the (streamed) answer with a tool call instead of the end of the
    /// turn (a simulation knob: the request's `nvext.sim_stop: "tool_use"`).
    pub tool_call: bool,
    pub(super) text_seed: u64,
    pub(super) guard: RequestGuard,
}

impl std::fmt::Debug for Prefilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefilled")
            .field("id", &self.id)
            .field("usage", &self.usage)
            .field("hbm_blocks", &self.hbm_blocks)
            .field("onboarded_blocks", &self.onboarded_blocks)
            .field("computed_tokens", &self.computed_tokens)
            .finish_non_exhaustive()
    }
}

/// A request in flight: its pool references and its share of the load
/// gauges. Dropped before [`RequestGuard::finish`]: the client went away.
pub(super) struct RequestGuard {
    worker: Arc<SimWorker>,
    held: Option<Held>,
    decode_blocks: u64,
    finished: bool,
}

impl RequestGuard {
    pub(super) fn new(worker: Arc<SimWorker>) -> Self {
        add(&worker.stats.running_requests, 1);
        let held = Held::new(worker.cache.clone());
        Self {
            worker,
            held: Some(held),
            decode_blocks: 0,
            finished: false,
        }
    }

    pub(super) fn held(&mut self) -> &mut Held {
        self.held
            .get_or_insert_with(|| Held::new(self.worker.cache.clone()))
    }

    pub(super) fn start_decode(&mut self, blocks: u64) {
        self.decode_blocks = blocks;
        add(&self.worker.stats.active_decode_blocks, blocks);
    }

    pub(super) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        drop(self.held.take());
        let s = &self.worker.stats;
        sub(&s.active_decode_blocks, self.decode_blocks);
        sub(&s.running_requests, 1);
        if !self.finished {
            add(&s.cancelled, 1);
        }
    }
}

const WORDS: [&str; 32] = [
    "the", "cache", "block", "prefix", "token", "agent", "router", "worker", "tier", "warm",
    "value", "hash", "pool", "layer", "model", "call", "tool", "result", "session", "context",
    "reuse", "fetch", "store", "evict", "route", "queue", "decode", "prefill", "stream", "answer",
    "memory", "host",
];

/// The `i`-th output word of a response seeded by `seed` (deterministic:
/// the same prompt gets the same answer on every worker).
pub fn output_word(seed: u64, i: u32) -> &'static str {
    let mut x = seed ^ (u64::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    WORDS[(x % WORDS.len() as u64) as usize]
}

/// The text piece of output token `i` (words separated by spaces).
pub fn output_piece(seed: u64, i: u32) -> String {
    let w = output_word(seed, i);
    if i == 0 {
        w.to_string()
    } else {
        format!(" {w}")
    }
}

impl Prefilled {
    /// The `x-kvtier-prefill` header value.
    pub fn prefill_header(&self) -> String {
        format!(
            "hbm={},onboarded={},computed_tokens={},queue_ms={}",
            self.hbm_blocks, self.onboarded_blocks, self.computed_tokens, self.queue_ms
        )
    }

    fn token_interval(&self) -> Option<Duration> {
        let rate = self.worker.config.decode_tokens_per_s;
        (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate))
    }

    /// Decodes the whole output, then returns the API's response body.
    pub async fn complete(mut self) -> serde_json::Value {
        if let Some(step) = self.token_interval() {
            tokio::time::sleep(step * self.osl).await;
        }
        let text: String = (0..self.osl)
            .map(|i| output_piece(self.text_seed, i))
            .collect();
        add(&self.worker.stats.completion_tokens, u64::from(self.osl));
        self.guard.finish();
        full_response(self.api, &self.id, &self.model, &text, self.usage)
    }

    /// The SSE body: the API's opening frames, one delta per output token
    /// paced by the decode rate, the closing frames. Dropping the stream
    /// (client gone) stops the decode and releases the request's blocks.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        enum Step {
            Start,
            Token(u32),
            Finish,
            Done,
        }
        let mut writer = StreamWriter::new(self.api, &self.id, &self.model);
        if self.tool_call {
            writer.end_with_tool_call("run_tool", "{}");
        }
        let interval = self.token_interval();
        let started = tokio::time::Instant::now();
        futures::stream::unfold(
            (self, writer, Step::Start),
            move |(mut p, mut writer, step)| async move {
                let frames = match step {
                    Step::Start => {
                        let usage = Usage {
                            completion_tokens: 0,
                            ..p.usage
                        };
                        let next = if p.osl == 0 {
                            Step::Finish
                        } else {
                            Step::Token(0)
                        };
                        (writer.start(usage), next)
                    }
                    Step::Token(i) => {
                        // Token i is due (i + 1) decode steps after the prefill.
                        if let Some(step) = interval {
                            tokio::time::sleep_until(started + step * (i + 1)).await;
                        }
                        add(&p.worker.stats.completion_tokens, 1);
                        let next = if i + 1 >= p.osl {
                            Step::Finish
                        } else {
                            Step::Token(i + 1)
                        };
                        (writer.delta(&output_piece(p.text_seed, i)), next)
                    }
                    Step::Finish => {
                        p.guard.finish();
                        (writer.finish(p.usage), Step::Done)
                    }
                    Step::Done => return None,
                };
                let (frames, next) = frames;
                Some((Ok(Bytes::from(frames.concat())), (p, writer, next)))
            },
        )
    }
}
