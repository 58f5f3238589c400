//! The worker's GPU as a bounded set of prefill slots with a waiting queue
//! in the order of [`schedule`](super::schedule).
//!
//! A call takes a [`Slot`] for its whole prefill; dropping the slot hands
//! it to the next waiting call (or frees it). A call whose client goes away
//! while it waits leaves the queue; one dropped in the instant it was
//! granted a slot hands that slot on, so no slot is ever lost.

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::schedule::{Place, PrefillQueue, SchedulingPolicy};

/// Prefill slots and the calls waiting for one.
#[derive(Debug)]
pub struct PrefillGate {
    /// A std mutex: held for a few map operations, never across an await.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Waiting calls; each is woken through its sender, slot granted.
    queue: PrefillQueue<oneshot::Sender<()>>,
    /// Slots no call holds.
    free: usize,
}

/// One prefill slot, held until dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    gate: &'a PrefillGate,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A call in the queue; dropped before it is granted: it leaves the queue.
struct Waiting<'a> {
    gate: &'a PrefillGate,
    place: Option<Place>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(place) = self.place else {
            return;
        };
        let removed = self.gate.state.lock().queue.remove(place).is_some();
        if !removed {
            // Granted a slot (under the lock) but dropped before taking it.
            self.gate.release();
        }
    }
}

impl PrefillGate {
    /// `slots` prefills at once (at least one), waiting calls ordered by `policy`.
    pub fn new(policy: SchedulingPolicy, slots: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: PrefillQueue::new(policy),
                free: slots.max(1),
            }),
        }
    }

    /// Calls waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Waits for a slot: at once while one is free and nobody waits, else
    /// in the queue at the place `priority` gives under the policy.
    pub async fn acquire(&self, priority: i32) -> Slot<'_> {
        let (rx, place) = {
            let mut s = self.state.lock();
            if s.free > 0 && s.queue.is_empty() {
                s.free -= 1;
                return Slot { gate: self };
            }
            let (tx, rx) = oneshot::channel();
            (rx, s.queue.push(priority, tx))
        };
        // Declared after `rx`, so dropped before it: a grant sent under the
        // lock is still in `rx`'s channel when `Waiting::drop` runs.
        let mut waiting = Waiting {
            gate: self,
            place: Some(place),
        };
        // The sender is only dropped after a send, or by `waiting` itself.
        let _ = rx.await;
        waiting.place = None;
        Slot { gate: self }
    }

    /// Hands a slot to the next waiting call, or frees it.
    fn release(&self) {
        let mut s = self.state.lock();
        while let Some(tx) = s.queue.pop() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        s.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Holds the one slot, queues `priorities` in order, then lets go and
    /// returns the order in which the queued calls got the slot.
    async fn grant_order(policy: SchedulingPolicy, priorities: &[i32]) -> Vec<usize> {
        let gate = Arc::new(PrefillGate::new(policy, 1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.acquire(0).await;
        let mut tasks = Vec::new();
        for (i, &p) in priorities.iter().enumerate() {
            let (g, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = g.acquire(p).await;
                order.lock().push(i);
                tokio::task::yield_now().await;
            }));
            // Queue them in this order.
            while gate.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        let out = order.lock().clone();
        out
    }

    #[tokio::test]
    async fn the_queue_follows_the_policy() {
        let priorities = [-4, -4, -4, 4, 0];
        assert_eq!(
            grant_order(SchedulingPolicy::Fcfs, &priorities).await,
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(
            grant_order(SchedulingPolicy::Priority, &priorities).await,
            vec![3, 4, 0, 1, 2]
        );
    }

    #[tokio::test]
    async fn slots_bound_the_prefills_at_once() {
        let gate = PrefillGate::new(SchedulingPolicy::Fcfs, 2);
        let a = gate.acquire(0).await;
        let _b = gate.acquire(0).await;
        let third = tokio::time::timeout(Duration::from_millis(50), gate.acquire(0)).await;
        assert!(
            third.is_err(),
            "a third call waits while two slots are held"
        );
        assert_eq!(gate.waiting(), 0, "the timed-out call left the queue");
        drop(a);
        let c = tokio::time::timeout(Duration::from_millis(50), gate.acquire(0)).await;
        assert!(c.is_ok(), "a freed slot is taken at once");
    }

    #[tokio::test]
    async fn a_call_gone_while_granted_hands_its_slot_on() {
        let gate = Arc::new(PrefillGate::new(SchedulingPolicy::Priority, 1));
        let held = gate.acquire(0).await;
        // A waiting call that is granted the slot, then dropped before it
        // runs again (polled once to enter the queue, never again).
        let mut gone = Box::pin(gate.acquire(8));
        assert!(futures::poll!(gone.as_mut()).is_pending());
        assert_eq!(gate.waiting(), 1);
        drop(held);
        assert_eq!(gate.waiting(), 0, "granted");
        drop(gone);
        let next = tokio::time::timeout(Duration::from_millis(50), gate.acquire(0)).await;
        assert!(next.is_ok(), "the slot was handed on, not lost");
    }
}
