//! Handshake sessions: a data call names its session, and through it the
//! namespace and configuration the client proved it uses.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::metadata::MetadataMap;
use tonic::Status;

use kvtier_proto::SESSION_METADATA_KEY;
use kvtier_security::{Client, Principal};

use crate::namespace::{forbidden_message, Namespace};

/// What a data call needs from its session's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Get, Lookup, agent calls.
    Read,
    /// Put.
    Write,
}

/// A session: its namespace and the principal that opened it (`None` when
/// authentication is off). Only that principal may use the session.
#[derive(Debug, Clone)]
struct Session {
    namespace: Namespace,
    principal: Option<Arc<Principal>>,
}

/// Open sessions, bounded: past `max` the oldest are forgotten (their clients
/// get FAILED_PRECONDITION and handshake again).
#[derive(Debug)]
pub struct Sessions {
    inner: Mutex<SessionsInner>,
    max: usize,
}

#[derive(Debug, Default)]
struct SessionsInner {
    by_id: HashMap<String, Session>,
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

    /// Opens a session on `namespace` for `principal` and returns its id.
    pub fn open(&self, namespace: Namespace, principal: Option<Arc<Principal>>) -> String {
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
        inner.by_id.insert(
            id.clone(),
            Session {
                namespace,
                principal,
            },
        );
        inner.order.push_back(id.clone());
        metrics::gauge!(crate::metrics::SESSIONS).set(inner.by_id.len() as f64);
        id
    }

    /// The namespace of a session named in the request body or, failing that,
    /// in the `kvtier-session` metadata header, once `client` is shown to be
    /// the session's principal and to hold the access `need`s (checked
    /// against the current token table, so a revoked grant takes effect at once).
    pub fn resolve(
        &self,
        body_id: &str,
        metadata: &MetadataMap,
        client: &Client,
        need: Need,
    ) -> Result<Namespace, Status> {
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
        let session = self.inner.lock().by_id.get(id).cloned().ok_or_else(|| {
            Status::failed_precondition(format!(
                "unknown session '{id}': it expired or the server restarted; call Handshake again"
            ))
        })?;
        if let Some(owner) = &session.principal {
            let ns = &session.namespace.name;
            let caller = client
                .principal
                .as_ref()
                .filter(|p| p.name == owner.name)
                .ok_or_else(|| {
                    Status::permission_denied(format!(
                        "session '{id}' belongs to another client: handshake with your own token"
                    ))
                })?;
            let access = caller.access(ns);
            let ok = match need {
                Need::Read => access.read,
                Need::Write => access.write,
            };
            if !ok {
                let what = match need {
                    Need::Read => "read",
                    Need::Write => "write",
                };
                return Err(Status::permission_denied(format!(
                    "{} (this call needs {what} access)",
                    forbidden_message(ns)
                )));
            }
        }
        Ok(session.namespace)
    }
}
