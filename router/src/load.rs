//! Worker load as the router sees it, and agent-to-worker affinity.
//!
//! The router books every call it sends (prefill tokens queued until the
//! first byte of the answer comes back, then decode blocks until the answer
//! ends); workers or custom routers may also report their load
//! (`ReportLoad`). A fresh report covers calls the router did not send, so
//! the larger of the two counts.
//!
//! The book also measures each worker's prefill rate from its bookings
//! ([`PrefillMeter`]), and tells a listener (the admission queue) whenever
//! load may have dropped: a prefill finished, a call ended, a report came.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::admission::threshold::PrefillMeter;

/// Load figures of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Prefill tokens queued or running.
    pub queued_prefill_tokens: u64,
    /// KV blocks of requests in decode.
    pub active_decode_blocks: u64,
    /// Requests running.
    pub running_requests: u32,
}

impl Load {
    fn max(self, other: Load) -> Load {
        Load {
            queued_prefill_tokens: self.queued_prefill_tokens.max(other.queued_prefill_tokens),
            active_decode_blocks: self.active_decode_blocks.max(other.active_decode_blocks),
            running_requests: self.running_requests.max(other.running_requests),
        }
    }
}

#[derive(Debug, Default)]
struct WorkerLoad {
    booked: Load,
    reported: Option<(Load, Instant)>,
    meter: PrefillMeter,
}

#[derive(Debug)]
struct Inner {
    workers: HashMap<String, WorkerLoad>,
    report_ttl: Duration,
}

/// Called when a worker's load may have dropped (outside the book's lock).
pub type LoadListener = Arc<dyn Fn() + Send + Sync>;

/// Per-worker load: calls booked by the router plus fresh reports.
#[derive(Clone)]
pub struct LoadBook {
    inner: Arc<Mutex<Inner>>,
    /// Set once (by the admission queue); a separate cell so that it is
    /// called without the book's lock held.
    listener: Arc<OnceLock<LoadListener>>,
}

impl std::fmt::Debug for LoadBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBook")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl LoadBook {
    /// A book in which a report counts for `report_ttl` after it arrives.
    pub fn new(report_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                workers: HashMap::new(),
                report_ttl,
            })),
            listener: Arc::new(OnceLock::new()),
        }
    }

    /// Calls `listener` whenever a worker's load may have dropped. One
    /// listener per book; a second is refused (returned).
    pub fn set_listener(&self, listener: LoadListener) -> Result<(), LoadListener> {
        self.listener.set(listener)
    }

    fn notify(&self) {
        if let Some(listener) = self.listener.get() {
            listener();
        }
    }

    /// The measured prefill rate (tokens/s) of each worker, in order; None
    /// until measured.
    pub fn prefill_rates(&self, workers: &[&str]) -> Vec<Option<f64>> {
        let inner = self.inner.lock();
        workers
            .iter()
            .map(|w| inner.workers.get(*w).and_then(|w| w.meter.rate()))
            .collect()
    }

    /// The load of `worker` now.
    pub fn load(&self, worker: &str) -> Load {
        self.loads(&[worker]).pop().unwrap_or_default()
    }

    /// [`LoadBook::load`] of each worker, in order, under one lock: what
    /// the router booked, or a fresher report when it is higher.
    pub fn loads(&self, workers: &[&str]) -> Vec<Load> {
        let inner = self.inner.lock();
        let now = Instant::now();
        workers
            .iter()
            .map(|worker| {
                inner
                    .workers
                    .get(*worker)
                    .map(|w| match w.reported {
                        Some((reported, at))
                            if now.saturating_duration_since(at) <= inner.report_ttl =>
                        {
                            w.booked.max(reported)
                        }
                        _ => w.booked,
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Records a report from the worker (or a custom router).
    pub fn report(&self, worker: &str, load: Load) {
        {
            let mut inner = self.inner.lock();
            inner
                .workers
                .entry(worker.to_string())
                .or_default()
                .reported = Some((load, Instant::now()));
        }
        self.notify();
    }

    /// Books a call: `prefill_tokens` to compute, `blocks` of KV once it decodes.
    /// The booking ends when the returned ticket is dropped.
    pub fn book(&self, worker: &str, prefill_tokens: u64, blocks: u64) -> CallTicket {
        {
            let mut inner = self.inner.lock();
            let w = inner.workers.entry(worker.to_string()).or_default();
            if prefill_tokens > 0 && w.booked.queued_prefill_tokens == 0 {
                w.meter.busy_from(Instant::now());
            }
            w.booked.queued_prefill_tokens += prefill_tokens;
            w.booked.running_requests += 1;
        }
        CallTicket {
            book: self.clone(),
            worker: worker.to_string(),
            prefill_tokens,
            blocks,
            decoding: false,
        }
    }

    /// Changes a worker's booked load; then tells the listener.
    fn update(&self, worker: &str, f: impl FnOnce(&mut WorkerLoad)) {
        {
            let mut inner = self.inner.lock();
            if let Some(w) = inner.workers.get_mut(worker) {
                f(w);
            }
        }
        self.notify();
    }
}

/// One booked call; dropping it ends the booking.
#[derive(Debug)]
pub struct CallTicket {
    book: LoadBook,
    worker: String,
    prefill_tokens: u64,
    blocks: u64,
    decoding: bool,
}

impl CallTicket {
    /// The worker answered its first byte: prefill is done, decode begins.
    pub fn prefill_done(&mut self) {
        if self.decoding {
            return;
        }
        self.decoding = true;
        let (prefill, blocks) = (self.prefill_tokens, self.blocks);
        self.book.update(&self.worker, |w| {
            let l = &mut w.booked;
            l.queued_prefill_tokens = l.queued_prefill_tokens.saturating_sub(prefill);
            l.active_decode_blocks += blocks;
            if prefill > 0 {
                let still_busy = l.queued_prefill_tokens > 0;
                w.meter.finished(prefill, Instant::now(), still_busy);
            }
        });
    }

    /// The worker the call went to.
    pub fn worker(&self) -> &str {
        &self.worker
    }
}

impl Drop for CallTicket {
    fn drop(&mut self) {
        let (prefill, blocks, decoding) = (self.prefill_tokens, self.blocks, self.decoding);
        self.book.update(&self.worker, |w| {
            let l = &mut w.booked;
            if decoding {
                l.active_decode_blocks = l.active_decode_blocks.saturating_sub(blocks);
            } else {
                l.queued_prefill_tokens = l.queued_prefill_tokens.saturating_sub(prefill);
                if prefill > 0 {
                    // Abandoned before its first byte: its time is not a rate.
                    let still_busy = l.queued_prefill_tokens > 0;
                    w.meter.finished(0, Instant::now(), still_busy);
                }
            }
            l.running_requests = l.running_requests.saturating_sub(1);
        });
    }
}

/// Which worker each agent's last call went to, bounded: when the current
/// generation fills up it becomes the previous one and the oldest is dropped
/// (two-generation LRU approximation, O(1) per call).
#[derive(Debug)]
pub struct AffinityMap {
    capacity: usize,
    current: HashMap<String, String>,
    previous: HashMap<String, String>,
}

impl AffinityMap {
    /// A map that remembers roughly the last `capacity` to `2 × capacity` agents.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// The agent's last worker.
    pub fn get(&self, agent: &str) -> Option<&str> {
        self.current
            .get(agent)
            .or_else(|| self.previous.get(agent))
            .map(String::as_str)
    }

    /// Records the agent's latest worker.
    pub fn set(&mut self, agent: &str, worker: &str) {
        if self.current.len() >= self.capacity && !self.current.contains_key(agent) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(agent);
        self.current.insert(agent.to_string(), worker.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_moves_from_prefill_to_decode_and_is_released_on_drop() {
        let book = LoadBook::new(Duration::from_secs(1));
        let mut t = book.book("w0", 1_000, 64);
        let _other = book.book("w0", 500, 32);
        assert_eq!(
            book.load("w0"),
            Load {
                queued_prefill_tokens: 1_500,
                active_decode_blocks: 0,
                running_requests: 2
            }
        );
        t.prefill_done();
        t.prefill_done();
        assert_eq!(book.load("w0").queued_prefill_tokens, 500);
        assert_eq!(book.load("w0").active_decode_blocks, 64);
        drop(t);
        assert_eq!(
            book.load("w0"),
            Load {
                queued_prefill_tokens: 500,
                active_decode_blocks: 0,
                running_requests: 1
            }
        );
    }

    #[test]
    fn a_fresh_report_counts_and_a_stale_one_does_not() {
        let book = LoadBook::new(Duration::from_millis(50));
        let _t = book.book("w0", 100, 1);
        book.report(
            "w0",
            Load {
                queued_prefill_tokens: 5_000,
                active_decode_blocks: 0,
                running_requests: 9,
            },
        );
        assert_eq!(book.load("w0").queued_prefill_tokens, 5_000);
        assert_eq!(book.load("w0").running_requests, 9);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(book.load("w0").queued_prefill_tokens, 100);
        assert_eq!(book.load("unknown"), Load::default());
    }

    #[test]
    fn the_listener_hears_every_drop_and_the_rate_is_measured_from_bookings() {
        let book = LoadBook::new(Duration::from_secs(1));
        let heard = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = heard.clone();
        let listener: LoadListener = Arc::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        assert!(book.set_listener(listener.clone()).is_ok());
        assert!(book.set_listener(listener).is_err(), "one listener");
        let heard = || heard.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(book.prefill_rates(&["w0"]), vec![None]);
        let mut t = book.book("w0", 2_000, 8);
        assert_eq!(heard(), 0, "booking adds load: nobody to wake");
        std::thread::sleep(Duration::from_millis(40));
        t.prefill_done();
        assert_eq!(heard(), 1);
        let rate = book.prefill_rates(&["w0"])[0].expect("measured");
        // 2,000 tokens in ≥ 40 ms: at most 50,000 tokens/s.
        assert!(rate > 0.0 && rate <= 50_000.0, "{rate}");
        drop(t);
        assert_eq!(heard(), 2);
        book.report("w0", Load::default());
        assert_eq!(heard(), 3);
    }

    #[test]
    fn affinity_is_bounded_and_keeps_recent_agents() {
        let mut map = AffinityMap::new(2);
        map.set("a", "w0");
        map.set("b", "w1");
        map.set("c", "w2"); // a, b become the previous generation
        assert_eq!(map.get("a"), Some("w0"));
        map.set("a", "w3"); // refreshed into the current generation
        map.set("d", "w4"); // current {c, a} full: b is forgotten
        assert_eq!(map.get("b"), None);
        assert_eq!(map.get("a"), Some("w3"));
        assert_eq!(map.get("c"), Some("w2"));
        assert_eq!(map.get("d"), Some("w4"));
    }
}
