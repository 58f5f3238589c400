//! The admission queue: when every worker of a model is busy, calls wait at
//! the router, in priority order, instead of piling into a worker's own FIFO.
//!
//! - [`threshold`]: when a worker is busy (queued prefill tokens, running
//!   calls; the prefill bound derived from its measured rate). Pure.
//! - [`order`]: who leaves the queue first (priority + latency boost +
//!   aging; ties FIFO) and the aging bound. Pure.
//! - [`args`]: its command-line flags.
//! - this module: the bounded async queue around them.
//!
//! A call is admitted at once while the queue is empty and some available
//! worker is under its busy threshold (or none is available: routing then
//! answers "no worker" without waiting). Otherwise it waits. Whenever load
//! may have dropped (the load book's listener: a prefill finished, a call
//! ended, a `ReportLoad` came), and every [`RECHECK`] besides (health
//! changes, expiring reports), the queue lets its next call go if a worker
//! has room. Admissions are granted one at a time: the admitted call holds
//! the grant ([`Admitted`]) until the router has booked it on a worker, so
//! the next decision sees that load.
//!
//! Bounds: at most `max_len` calls wait (one more is [`Rejected::QueueFull`],
//! a 429), none longer than `max_wait` ([`Rejected::MaxWait`], a 503); both
//! carry a Retry-After hint. A waiting call whose future is dropped (its
//! client disconnected) leaves the queue at once.

pub mod args;
pub mod order;
pub mod threshold;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::load::LoadBook;
use crate::metrics as m;
use crate::routing::WorkerHealth;

pub use args::AdmissionArgs;
pub use order::OrderConfig;
pub use threshold::ThresholdConfig;

/// How often a waiting call re-checks for room without being told (worker
/// health and report expiry change load without a booking event).
pub const RECHECK: Duration = Duration::from_millis(100);

/// The queue's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// When a worker is busy.
    pub threshold: ThresholdConfig,
    /// Who leaves first.
    pub order: OrderConfig,
    /// Calls that may wait (one more is rejected with 429). Default 1024.
    pub max_len: usize,
    /// Longest wait of a call (then 503). Default 30 s.
    pub max_wait: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            threshold: ThresholdConfig::default(),
            order: OrderConfig::default(),
            max_len: 1024,
            max_wait: Duration::from_secs(30),
        }
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The queue holds `max_len` calls.
    #[error(
        "every worker is busy and the router's admission queue is full ({len} calls waiting, \
         --queue-max-len); retry in {retry_after_secs} s"
    )]
    QueueFull {
        /// Calls waiting.
        len: usize,
        /// Retry-After hint.
        retry_after_secs: u64,
    },
    /// The call waited `max_wait` without a worker dropping under its threshold.
    #[error(
        "every worker stayed busy for the {waited_ms} ms this call waited in the router's \
         admission queue (--queue-max-wait-ms); retry in {retry_after_secs} s"
    )]
    MaxWait {
        /// How long it waited.
        waited_ms: u64,
        /// Retry-After hint.
        retry_after_secs: u64,
    },
}

impl Rejected {
    /// The `reason` label of the rejection metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::QueueFull { .. } => "queue_full",
            Rejected::MaxWait { .. } => "max_wait",
        }
    }

    /// Seconds the client should wait before retrying.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Rejected::QueueFull {
                retry_after_secs, ..
            }
            | Rejected::MaxWait {
                retry_after_secs, ..
            } => *retry_after_secs,
        }
    }
}

struct Waiter {
    call: order::QueuedCall,
    grant: oneshot::Sender<()>,
}

#[derive(Default)]
struct QueueState {
    waiting: Vec<Waiter>,
    /// An admitted call has not booked its worker yet.
    granted: bool,
    next_seq: u64,
    /// Moving average of the waits of calls that left the queue admitted
    /// (the Retry-After hint).
    recent_wait: Duration,
}

struct Shared {
    config: AdmissionConfig,
    /// Held only for O(queue + workers) bookkeeping, never across an await
    /// (a parking_lot lock: cheaper than tokio's, and the listener is sync).
    state: Mutex<QueueState>,
    load: LoadBook,
    health: Arc<dyn WorkerHealth>,
    workers: Vec<String>,
}

/// One model's admission queue (cheap to clone).
#[derive(Clone)]
pub struct AdmissionQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdmissionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionQueue")
            .field("config", &self.shared.config)
            .field("depth", &self.depth())
            .finish()
    }
}

fn priority_label(priority: i32) -> String {
    priority
        .clamp(order::MIN_PRIORITY, order::MAX_PRIORITY)
        .to_string()
}

impl AdmissionQueue {
    /// A queue for the workers `workers` whose load `load` books; it listens
    /// to the book for load drops.
    pub fn new(
        config: AdmissionConfig,
        load: LoadBook,
        health: Arc<dyn WorkerHealth>,
        workers: Vec<String>,
    ) -> Self {
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(QueueState::default()),
            load,
            health,
            workers,
        });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let listener = Arc::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.pump();
            }
        });
        if shared.load.set_listener(listener).is_err() {
            tracing::warn!(
                "the load book already has a listener; the queue re-checks on its timer only"
            );
        }
        Self { shared }
    }

    /// Its parameters.
    pub fn config(&self) -> &AdmissionConfig {
        &self.shared.config
    }

    /// Calls waiting now.
    pub fn depth(&self) -> usize {
        self.shared.state.lock().waiting.len()
    }

    /// Waits until the call may be routed, or rejects it. Dropping the
    /// future while it waits takes the call out of the queue.
    pub async fn admit(
        &self,
        priority: i32,
        latency_sensitivity: f32,
    ) -> Result<Admitted, Rejected> {
        let shared = &self.shared;
        let enqueued = Instant::now();
        let label = priority_label(priority);
        let mut leave = {
            let mut state = shared.state.lock();
            if !state.granted && state.waiting.is_empty() && shared.has_room() {
                state.granted = true;
                drop(state);
                histogram!(m::QUEUE_WAIT_SECONDS, "priority" => label).record(0.0);
                return Ok(Admitted {
                    shared: shared.clone(),
                    waited: Duration::ZERO,
                });
            }
            if state.waiting.len() >= shared.config.max_len {
                let rejected = Rejected::QueueFull {
                    len: state.waiting.len(),
                    retry_after_secs: shared.retry_after(&state),
                };
                drop(state);
                counter!(m::QUEUE_REJECTED, "reason" => rejected.reason()).increment(1);
                return Err(rejected);
            }
            let (tx, rx) = oneshot::channel();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.waiting.push(Waiter {
                call: order::QueuedCall {
                    seq,
                    priority,
                    latency_sensitivity,
                    enqueued,
                },
                grant: tx,
            });
            gauge!(m::QUEUE_DEPTH, "priority" => label.clone()).increment(1.0);
            Leave {
                shared: shared.clone(),
                seq,
                grant: rx,
                armed: true,
            }
        };
        // A grant may be outstanding with room for more: let the order decide.
        shared.pump();
        let deadline = enqueued + shared.config.max_wait;
        loop {
            let wake = deadline.min(Instant::now() + RECHECK);
            match tokio::time::timeout_at(wake.into(), &mut leave.grant).await {
                Ok(Ok(())) => return Ok(leave.admitted(&label, enqueued)),
                Ok(Err(_)) => {
                    // The grant's sender went without a grant: only `Leave`
                    // removes a waiter without granting, so this cannot
                    // happen; answer as a timeout all the same.
                    leave.armed = false;
                    return Err(Rejected::MaxWait {
                        waited_ms: enqueued.elapsed().as_millis() as u64,
                        retry_after_secs: 1,
                    });
                }
                Err(_) if Instant::now() >= deadline => {
                    // Leave, unless the grant came in the meantime.
                    if shared.remove(leave.seq) {
                        leave.armed = false;
                        let rejected = Rejected::MaxWait {
                            waited_ms: enqueued.elapsed().as_millis() as u64,
                            retry_after_secs: shared.retry_after(&shared.state.lock()),
                        };
                        counter!(m::QUEUE_REJECTED, "reason" => rejected.reason()).increment(1);
                        return Err(rejected);
                    }
                    if leave.grant.try_recv().is_ok() {
                        return Ok(leave.admitted(&label, enqueued));
                    }
                    leave.armed = false;
                    return Err(Rejected::MaxWait {
                        waited_ms: enqueued.elapsed().as_millis() as u64,
                        retry_after_secs: 1,
                    });
                }
                Err(_) => shared.pump(),
            }
        }
    }
}

/// A waiting call's place; dropped armed (the client went away), it leaves
/// the queue, or hands back a grant it never took.
struct Leave {
    shared: Arc<Shared>,
    seq: u64,
    /// Where the grant arrives.
    grant: oneshot::Receiver<()>,
    armed: bool,
}

impl Leave {
    fn admitted(&mut self, label: &str, enqueued: Instant) -> Admitted {
        self.armed = false;
        let waited = enqueued.elapsed();
        histogram!(m::QUEUE_WAIT_SECONDS, "priority" => label.to_string())
            .record(waited.as_secs_f64());
        Admitted {
            shared: self.shared.clone(),
            waited,
        }
    }
}

impl Drop for Leave {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.shared.remove(self.seq) {
            counter!(m::QUEUE_ABANDONED).increment(1);
            tracing::debug!(seq = self.seq, "a queued call's client went away");
        } else if self.grant.try_recv().is_ok() {
            // Granted but never taken: the grant goes to the next call.
            self.shared.state.lock().granted = false;
        }
        self.shared.pump();
    }
}

/// An admitted call. Route and book it, then drop this: the next queued
/// call's decision then sees the booked load.
pub struct Admitted {
    shared: Arc<Shared>,
    waited: Duration,
}

impl Admitted {
    /// Time spent in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("waited", &self.waited)
            .finish()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.state.lock().granted = false;
        self.shared.pump();
    }
}

impl Shared {
    /// Some available worker is under its busy threshold, or none is available.
    fn has_room(&self) -> bool {
        let ids: Vec<&str> = self.workers.iter().map(String::as_str).collect();
        let loads = self.load.loads(&ids);
        let rates = self.load.prefill_rates(&ids);
        let available = self.health.availability(&ids);
        threshold::has_room(&self.config.threshold, &loads, &rates, &available)
    }

    fn retry_after(&self, state: &QueueState) -> u64 {
        threshold::retry_after_secs(state.recent_wait, self.config.max_wait)
    }

    /// Takes call `seq` out of the queue; false when it is not there (granted).
    fn remove(&self, seq: u64) -> bool {
        let mut state = self.state.lock();
        let Some(i) = state.waiting.iter().position(|w| w.call.seq == seq) else {
            return false;
        };
        let waiter = state.waiting.swap_remove(i);
        gauge!(m::QUEUE_DEPTH, "priority" => priority_label(waiter.call.priority)).decrement(1.0);
        true
    }

    /// Grants the next call if there is room and no grant is outstanding.
    fn pump(&self) {
        let mut state = self.state.lock();
        loop {
            if state.granted || state.waiting.is_empty() || !self.has_room() {
                return;
            }
            let now = Instant::now();
            let Some(i) = order::next(
                &self.config.order,
                state.waiting.iter().map(|w| &w.call),
                now,
            ) else {
                return;
            };
            let waiter = state.waiting.swap_remove(i);
            gauge!(m::QUEUE_DEPTH, "priority" => priority_label(waiter.call.priority))
                .decrement(1.0);
            if waiter.grant.send(()).is_ok() {
                state.granted = true;
                let waited = now.saturating_duration_since(waiter.call.enqueued);
                state.recent_wait = (state.recent_wait * 4 + waited) / 5;
                return;
            }
            // Its receiver is gone (its `Leave` is being dropped and finds
            // it removed): the next one.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Up;

    impl WorkerHealth for Up {
        fn is_available(&self, _: &str) -> bool {
            true
        }
        fn mark_unreachable(&self, _: &str, _: &str) {}
    }

    /// One worker, busy while one call runs.
    fn queue(max_len: usize, max_wait_ms: u64) -> (LoadBook, AdmissionQueue) {
        let book = LoadBook::new(Duration::from_secs(1));
        let config = AdmissionConfig {
            threshold: ThresholdConfig {
                busy_running_calls: 1,
                busy_prefill_tokens: u64::MAX,
                ..ThresholdConfig::default()
            },
            order: OrderConfig {
                latency_boost: 4.0,
                aging: None,
            },
            max_len,
            max_wait: Duration::from_millis(max_wait_ms),
        };
        let queue = AdmissionQueue::new(config, book.clone(), Arc::new(Up), vec!["w0".into()]);
        (book, queue)
    }

    async fn wait_depth(queue: &AdmissionQueue, depth: usize) {
        for _ in 0..500 {
            if queue.depth() == depth {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("depth {} never reached {depth}", queue.depth());
    }

    #[tokio::test]
    async fn calls_wait_while_the_worker_is_busy_and_leave_in_priority_order() {
        let (book, queue) = queue(16, 10_000);
        let first = queue.admit(0, 0.0).await.expect("room");
        assert_eq!(first.waited(), Duration::ZERO);
        let running = book.book("w0", 0, 1);
        drop(first);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, priority, sensitivity) in [("low", -4, 0.0), ("mid", 0, 0.0), ("urgent", 2, 1.0)]
        {
            let depth = queue.depth() + 1;
            let (q, tx, book) = (queue.clone(), tx.clone(), book.clone());
            tokio::spawn(async move {
                let admitted = q.admit(priority, sensitivity).await.expect("admitted");
                // Book like the router does, then hold the worker briefly.
                let ticket = book.book("w0", 0, 1);
                drop(admitted);
                tx.send(name).expect("send");
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(ticket);
            });
            wait_depth(&queue, depth).await;
        }
        drop(running);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.expect("admitted"));
        }
        assert_eq!(order, ["urgent", "mid", "low"]);
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_rejects_a_long_wait_times_out_and_a_dropped_call_leaves() {
        let (book, queue) = queue(1, 150);
        let _running = book.book("w0", 0, 1);
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.admit(0, 0.0).await }
        });
        wait_depth(&queue, 1).await;
        match queue.admit(8, 1.0).await {
            Err(Rejected::QueueFull {
                len: 1,
                retry_after_secs: 1,
            }) => {}
            other => panic!("expected QueueFull, got {other:?}"),
        }
        match waiting.await.expect("joined") {
            Err(e @ Rejected::MaxWait { waited_ms, .. }) => {
                assert!(waited_ms >= 150, "{waited_ms}");
                assert_eq!(e.reason(), "max_wait");
            }
            other => panic!("expected MaxWait, got {other:?}"),
        }
        assert_eq!(queue.depth(), 0);
        // A call whose future is dropped leaves at once.
        let gone = tokio::spawn({
            let queue = queue.clone();
            async move { queue.admit(0, 0.0).await }
        });
        wait_depth(&queue, 1).await;
        gone.abort();
        wait_depth(&queue, 0).await;
    }

    #[tokio::test]
    async fn no_available_worker_admits_at_once_so_routing_can_say_so() {
        struct Down;
        impl WorkerHealth for Down {
            fn is_available(&self, _: &str) -> bool {
                false
            }
            fn mark_unreachable(&self, _: &str, _: &str) {}
        }
        let book = LoadBook::new(Duration::from_secs(1));
        let _running = book.book("w0", 0, 1);
        let config = AdmissionConfig {
            threshold: ThresholdConfig {
                busy_running_calls: 1,
                ..ThresholdConfig::default()
            },
            ..AdmissionConfig::default()
        };
        let queue = AdmissionQueue::new(config, book, Arc::new(Down), vec!["w0".into()]);
        assert!(queue.admit(0, 0.0).await.is_ok());
    }
}
