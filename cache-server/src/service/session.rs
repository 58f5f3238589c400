//! Handshake sessions: a data call names its session, and through it the
//! namespace and configuration the client proved it uses.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

use parking_lot::Mutex;
use tonic::metadata::MetadataMap;
use tonic::Status;

use kvtier_proto::SESSION_METADATA_KEY;

use crate::namespace::Namespace;

/// Open sessions, bounded: past `max` the oldest are forgotten (their clients
/// get FAILED_PRECONDITION and handshake again).
#[derive(Debug)]
pub struct Sessions {
    inner: Mutex<SessionsInner>,
    max: usize,
}

#[derive(Debug, Default)]
struct SessionsInner {
    by_id: HashMap<String, Namespace>,
    order: VecDeque<String>,
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS once per thread and advanced per
    // instance: unpredictable enough for an opaque session id.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x6b76_7469_6572);
    h.finish()
}

impl Sessions {
    /// At most `max` sessions at once.
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(SessionsInner::default()),
            max: max.max(1),
        }
    }

    /// Opens a session on `namespace` and returns its id.
    pub fn open(&self, namespace: Namespace) -> String {
        let id = format!("{:016x}{:016x}", random_u64(), random_u64());
        let mut inner = self.inner.lock();
        while inner.by_id.len() >= self.max {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.by_id.remove(&old);
                }
                None => break,
            }
        }
        inner.by_id.insert(id.clone(), namespace);
        inner.order.push_back(id.clone());
        metrics::gauge!(crate::metrics::SESSIONS).set(inner.by_id.len() as f64);
        id
    }

    /// The namespace of a session named in the request body or, failing that,
    /// in the `kvtier-session` metadata header.
    pub fn resolve(&self, body_id: &str, metadata: &MetadataMap) -> Result<Namespace, Status> {
        let id = if body_id.is_empty() {
            metadata
                .get(SESSION_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        } else {
            body_id
        };
        if id.is_empty() {
            return Err(Status::failed_precondition(
                "no session: call Handshake first and pass its session_id in the request \
                 (or in the kvtier-session metadata header)",
            ));
        }
        self.inner.lock().by_id.get(id).cloned().ok_or_else(|| {
            Status::failed_precondition(format!(
                "unknown session '{id}': it expired or the server restarted; call Handshake again"
            ))
        })
    }
}
