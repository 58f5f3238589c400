//! Per-client limits: requests in flight and bytes per second.
//!
//! Each client (see [`crate::auth::Client::id`]) gets a semaphore of
//! `max_concurrent` permits and a token bucket of `bytes_per_sec` refilled
//! continuously, holding at most `burst_bytes`. Nothing waits: a refusal is a
//! [`Throttled`] with the time after which a retry can succeed, which servers
//! turn into `RESOURCE_EXHAUSTED` plus a `retry-after-ms` header. Limits are
//! per client, so a greedy client is refused while others keep their share.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Per-client limits; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitConfig {
    /// Requests one client may have in flight. Default 0 (unlimited).
    pub max_concurrent: usize,
    /// Payload bytes per second one client may move (in and out). Default 0 (unlimited).
    pub bytes_per_sec: u64,
    /// Bucket size: bytes a client may move at once after idling. Default
    /// (0) is one second's worth.
    pub burst_bytes: u64,
}

/// Why a client was refused, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client {client} is over its {what} limit ({limit}); retry after {} ms", retry_after.as_millis())]
pub struct Throttled {
    /// The client.
    pub client: String,
    /// Which limit: "concurrency" or "byte-rate".
    pub what: &'static str,
    /// The limit, in words.
    pub limit: String,
    /// When a retry can succeed.
    pub retry_after: Duration,
}

impl From<Throttled> for Status {
    fn from(t: Throttled) -> Status {
        let mut status = Status::resource_exhausted(t.to_string());
        if let Ok(v) = t.retry_after.as_millis().max(1).to_string().parse() {
            status.metadata_mut().insert("retry-after-ms", v);
        }
        status
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct ClientState {
    slots: Option<Arc<Semaphore>>,
    bucket: Mutex<Bucket>,
}

/// A client's request slot; released on drop.
#[derive(Debug)]
pub struct ClientPermit {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Most clients tracked; idle ones are forgotten beyond this.
const MAX_CLIENTS: usize = 65_536;

/// Per-client limiters, created on first use.
#[derive(Debug, Default)]
pub struct ClientLimiter {
    config: LimitConfig,
    clients: Mutex<HashMap<Arc<str>, Arc<ClientState>>>,
}

impl ClientLimiter {
    /// A limiter with `config`.
    pub fn new(config: LimitConfig) -> Self {
        Self {
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> LimitConfig {
        self.config
    }

    fn burst(&self) -> f64 {
        if self.config.burst_bytes > 0 {
            self.config.burst_bytes as f64
        } else {
            self.config.bytes_per_sec as f64
        }
    }

    fn state(&self, client: &Arc<str>) -> Arc<ClientState> {
        let mut clients = self.clients.lock();
        if let Some(s) = clients.get(client) {
            return Arc::clone(s);
        }
        if clients.len() >= MAX_CLIENTS {
            // Forget clients with nothing in flight (their buckets refill anyway).
            clients.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let state = Arc::new(ClientState {
            slots: (self.config.max_concurrent > 0)
                .then(|| Arc::new(Semaphore::new(self.config.max_concurrent))),
            bucket: Mutex::new(Bucket {
                tokens: self.burst(),
                at: Instant::now(),
            }),
        });
        clients.insert(Arc::clone(client), Arc::clone(&state));
        state
    }

    /// Takes one of the client's request slots, or refuses at once.
    pub fn acquire(&self, client: &Arc<str>) -> Result<ClientPermit, Throttled> {
        if self.config.max_concurrent == 0 {
            return Ok(ClientPermit { _permit: None });
        }
        let state = self.state(client);
        let Some(slots) = &state.slots else {
            return Ok(ClientPermit { _permit: None });
        };
        match Arc::clone(slots).try_acquire_owned() {
            Ok(p) => Ok(ClientPermit { _permit: Some(p) }),
            Err(_) => Err(Throttled {
                client: client.to_string(),
                what: "concurrency",
                limit: format!("{} requests in flight", self.config.max_concurrent),
                retry_after: Duration::from_millis(100),
            }),
        }
    }

    /// Charges `bytes` to the client's byte rate. A charge larger than the
    /// bucket passes when the bucket is full (and leaves it in debt), so
    /// that no single message is refused forever.
    pub fn charge(&self, client: &Arc<str>, bytes: u64) -> Result<(), Throttled> {
        let rate = self.config.bytes_per_sec as f64;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = self.burst();
        let state = self.state(client);
        let mut b = state.bucket.lock();
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        let need = bytes as f64;
        if b.tokens >= need || b.tokens >= burst {
            b.tokens -= need;
            return Ok(());
        }
        let wait = (need.min(burst) - b.tokens) / rate;
        Err(Throttled {
            client: client.to_string(),
            what: "byte-rate",
            limit: format!("{} bytes/s", self.config.bytes_per_sec),
            retry_after: Duration::from_secs_f64(wait.max(0.001)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_per_client() {
        let l = ClientLimiter::new(LimitConfig {
            max_concurrent: 2,
            ..Default::default()
        });
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let p1 = l.acquire(&a).expect("1");
        let _p2 = l.acquire(&a).expect("2");
        let err = l.acquire(&a).expect_err("3rd refused");
        assert_eq!(err.what, "concurrency");
        let _b1 = l.acquire(&b).expect("other client unaffected");
        drop(p1);
        let _p3 = l.acquire(&a).expect("slot freed");
        let status: Status = err.into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.metadata().get("retry-after-ms").is_some());
    }

    #[test]
    fn byte_rate_with_retry_hint() {
        let l = ClientLimiter::new(LimitConfig {
            bytes_per_sec: 1000,
            burst_bytes: 1000,
            ..Default::default()
        });
        let a: Arc<str> = "a".into();
        l.charge(&a, 600).expect("in burst");
        let err = l.charge(&a, 600).expect_err("over");
        assert!(err.retry_after > Duration::from_millis(100));
        assert!(err.retry_after <= Duration::from_millis(700));
        l.charge(&"b".into(), 1000).expect("other client");
        // Unlimited by default.
        ClientLimiter::new(LimitConfig::default())
            .charge(&a, u64::MAX)
            .expect("unlimited");
        // Oversized message passes on a full bucket.
        let l2 = ClientLimiter::new(LimitConfig {
            bytes_per_sec: 10,
            ..Default::default()
        });
        l2.charge(&a, 1 << 20)
            .expect("full bucket admits one oversized charge");
        assert!(l2.charge(&a, 1).is_err());
    }
}
