//! A cache server's registration: its [`Member`] record at
//! `{prefix}/nodes/{id}` under a lease of its own.
//!
//! - **Create-if-absent**: the record is written in a transaction that
//!   succeeds only when the key does not exist, so a second process with the
//!   same id is refused. At start a held id is retried for
//!   [`RegistrationConfig::holder_wait`] (one TTL and a second by default):
//!   a previous run of this node killed with `kill -9` leaves its record
//!   until its lease expires; a live holder keeps it and start fails with
//!   [`ClusterError::DuplicateNode`].
//! - **Keep-alive** every third of the TTL, so two keep-alives can be lost
//!   before the lease expires.
//! - **A lost lease never stops the server**: when etcd says the lease is
//!   gone (expired while the process was stopped, or etcd came back without
//!   its data) the task registers again with a new lease and a new epoch,
//!   retrying for ever with a log line that says why. While etcd is
//!   unreachable it keeps trying the same lease, which survives an etcd
//!   restart with its data.
//! - [`Registration::set_state`] marks the node draining (or active again);
//!   [`Registration::deregister`] revokes the lease, which deletes the record
//!   at once (a graceful stop), while dropping the handle only stops the
//!   keep-alives (the record then expires with the lease).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::etcd::{existing_value, Etcd};
use crate::member::{Member, MemberState};
use crate::ClusterError;

/// Default lease TTL of a registration.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// Pause between attempts while waiting for a held id or a reachable etcd.
const RETRY: Duration = Duration::from_millis(500);

/// Longest pause between re-registration attempts.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// What to register and how.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The record (its `epoch` is chosen here, see [`next_epoch`]).
    pub member: Member,
    /// Lease TTL, whole seconds, at least 1 (etcd may raise a very short one
    /// to its minimum, about 2 s with default election settings).
    pub ttl: Duration,
    /// How long start waits for a record with this id to go away.
    pub holder_wait: Duration,
}

impl RegistrationConfig {
    /// `member` with `ttl`, waiting one TTL and a second for a held id.
    pub fn new(member: Member, ttl: Duration) -> Self {
        Self {
            member,
            ttl,
            holder_wait: ttl + Duration::from_secs(1),
        }
    }
}

/// Where a registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// Whether the record is known to exist under a live lease.
    pub registered: bool,
    /// Epoch of the current (or last) record.
    pub epoch: u64,
    /// How many times this process registered (1 after start).
    pub registrations: u64,
}

/// A live registration; see the module doc.
#[derive(Debug)]
pub struct Registration {
    status: watch::Receiver<RegistrationStatus>,
    desired: watch::Sender<MemberState>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// Strictly greater than `previous`, and the wall clock in milliseconds when
/// that is greater: epochs grow across re-registrations and restarts.
pub fn next_epoch(previous: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.max(previous + 1)
}

/// Why one registration attempt did not take.
enum Attempt {
    /// The key exists: its value.
    Held(String),
    /// etcd failed.
    Failed(ClusterError),
}

/// A granted lease and the record written under it.
struct Lease {
    id: i64,
    ttl: Duration,
    member: Member,
}

impl Registration {
    /// Registers `config.member` (waiting for a held id as the module doc
    /// says) and starts the keep-alive task. Fails when etcd cannot be
    /// reached (the caller decides whether to retry) or when the id stays
    /// held.
    pub async fn start(etcd: &Etcd, config: RegistrationConfig) -> Result<Self, ClusterError> {
        config.member.validate()?;
        let key = etcd.url().node_key(&config.member.id);
        let deadline = Instant::now() + config.holder_wait;
        let mut member = config.member.clone();
        member.epoch = next_epoch(member.epoch);
        let mut said_waiting = false;
        let lease = loop {
            match attempt(etcd, &key, &member, config.ttl).await {
                Ok(lease) => break lease,
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Held(holder)) => {
                    if Instant::now() >= deadline {
                        return Err(ClusterError::DuplicateNode {
                            id: member.id.clone(),
                            holder,
                            waited_s: config.holder_wait.as_secs(),
                        });
                    }
                    if !said_waiting {
                        said_waiting = true;
                        tracing::warn!(
                            node = %member.id, %holder,
                            wait_s = config.holder_wait.as_secs(),
                            "cluster: node id is registered by another record; waiting for its lease \
                             to expire (a killed previous run of this node leaves one until then)"
                        );
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        tracing::info!(
            node = %lease.member.id, epoch = lease.member.epoch, grpc = %lease.member.grpc,
            ttl_s = lease.ttl.as_secs(), key = %key, "cluster: registered"
        );
        let (status_tx, status) = watch::channel(RegistrationStatus {
            registered: true,
            epoch: lease.member.epoch,
            registrations: 1,
        });
        let (desired, desired_rx) = watch::channel(lease.member.state);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(maintain(
            etcd.clone(),
            key,
            lease,
            status_tx,
            desired_rx,
            stop_rx,
        ));
        Ok(Self {
            status,
            desired,
            stop,
            task: Some(task),
        })
    }

    /// Where the registration stands now.
    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Marks the node draining or active; written at once when etcd is
    /// reachable, else on the next keep-alive that reaches it.
    pub fn set_state(&self, state: MemberState) {
        self.desired.send_replace(state);
    }

    /// Stops the keep-alives and revokes the lease (the record goes at once
    /// when etcd is reachable); waits up to 5 s for that.
    pub async fn deregister(&self) {
        let _ = self.stop.send(true);
        let mut status = self.status.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| !s.registered)).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One try: a new lease and the record under it, if the key is free.
async fn attempt(etcd: &Etcd, key: &str, member: &Member, ttl: Duration) -> Result<Lease, Attempt> {
    let mut client = etcd.client();
    let ttl_s = ttl.as_secs().max(1) as i64;
    let grant = client
        .lease_grant(ttl_s, None)
        .await
        .map_err(|e| Attempt::Failed(etcd.error("granting a lease", e)))?;
    let id = grant.id();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            member.to_json(),
            Some(PutOptions::new().with_lease(id)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let result = client.txn(txn).await;
    match result {
        Ok(r) if r.succeeded() => Ok(Lease {
            id,
            ttl: Duration::from_secs(grant.ttl().max(1) as u64),
            member: member.clone(),
        }),
        Ok(r) => {
            let _ = client.lease_revoke(id).await;
            let holder = existing_value(&r.op_responses())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_else(|| "a record that vanished meanwhile".into());
            Err(Attempt::Held(holder))
        }
        Err(e) => {
            let _ = client.lease_revoke(id).await;
            Err(Attempt::Failed(
                etcd.error("registering (create-if-absent transaction)", e),
            ))
        }
    }
}

/// Why [`keep`] returned.
enum Kept {
    Stop,
    Lost(String),
}

/// The background task: keep the lease, write state changes, re-register
/// when the lease is lost, revoke on stop.
async fn maintain(
    etcd: Etcd,
    key: String,
    mut lease: Lease,
    status: watch::Sender<RegistrationStatus>,
    mut desired: watch::Receiver<MemberState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match keep(&etcd, &key, &mut lease, &mut desired, &mut stop).await {
            Kept::Stop => {
                match etcd.client().lease_revoke(lease.id).await {
                    Ok(_) => {
                        tracing::info!(node = %lease.member.id, "cluster: deregistered (lease revoked)")
                    }
                    Err(e) => tracing::warn!(node = %lease.member.id, error = %e,
                        "cluster: could not revoke the lease; the record expires with it"),
                }
                return;
            }
            Kept::Lost(reason) => {
                status.send_modify(|s| s.registered = false);
                tracing::warn!(
                    node = %lease.member.id, epoch = lease.member.epoch, %reason,
                    "cluster: registration lost; registering again with a new epoch (the server keeps serving)"
                );
                let mut member = lease.member.clone();
                member.state = *desired.borrow_and_update();
                let Some(renewed) = reregister(&etcd, &key, member, lease.ttl, &mut stop).await
                else {
                    return; // stopped while unregistered: nothing to revoke
                };
                lease = renewed;
                status.send_modify(|s| {
                    s.registered = true;
                    s.epoch = lease.member.epoch;
                    s.registrations += 1;
                });
            }
        }
    }
}

/// Registers again until it works (or a stop is asked: `None`).
async fn reregister(
    etcd: &Etcd,
    key: &str,
    mut member: Member,
    ttl: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<Lease> {
    let mut pause = RETRY;
    let mut failures = 0u64;
    loop {
        member.epoch = next_epoch(member.epoch);
        let why = match attempt(etcd, key, &member, ttl).await {
            Ok(lease) => {
                tracing::info!(
                    node = %member.id, epoch = member.epoch, after_failures = failures,
                    "cluster: registered again"
                );
                return Some(lease);
            }
            Err(Attempt::Held(holder)) => format!(
                "the id is registered by another record ({holder}): another process may be \
                 using this node id"
            ),
            Err(Attempt::Failed(e)) => e.to_string(),
        };
        failures += 1;
        // Every failure of the first few, then one in ten: a long etcd
        // outage must not flood the log.
        if failures <= 3 || failures.is_multiple_of(10) {
            tracing::warn!(
                node = %member.id, failures, retry_in_ms = pause.as_millis() as u64, reason = %why,
                "cluster: cannot register yet; retrying (the server keeps serving)"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
        pause = (pause * 2).min(MAX_RETRY.min(ttl.max(RETRY)));
    }
}

/// Keeps `lease` alive until it is lost or a stop is asked; writes state
/// changes under it.
async fn keep(
    etcd: &Etcd,
    key: &str,
    lease: &mut Lease,
    desired: &mut watch::Receiver<MemberState>,
    stop: &mut watch::Receiver<bool>,
) -> Kept {
    let period = (lease.ttl / 3).max(Duration::from_millis(200));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stream = None;
    let mut state_dirty = false;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Kept::Stop,
            changed = desired.changed() => {
                if changed.is_err() {
                    return Kept::Stop;
                }
                state_dirty = true;
            }
            _ = tick.tick() => {}
        }
        if state_dirty {
            let mut member = lease.member.clone();
            member.state = *desired.borrow_and_update();
            let put = etcd
                .client()
                .put(
                    key,
                    member.to_json(),
                    Some(PutOptions::new().with_lease(lease.id)),
                )
                .await;
            match put {
                Ok(_) => {
                    tracing::info!(node = %member.id, state = member.state.as_str(), "cluster: state written");
                    lease.member = member;
                    state_dirty = false;
                }
                Err(e) if e.to_string().contains("lease not found") => {
                    return Kept::Lost(format!("etcd no longer knows lease {:x}", lease.id));
                }
                Err(_) => {} // unreachable: retried on the next tick
            }
        }
        if stream.is_none() && unreachable_since.is_some() {
            // Back from an outage (or a keep-alive that went unanswered):
            // ask plainly whether the lease still exists, since a restarted
            // etcd without its data may leave a keep-alive for an unknown
            // lease unanswered for a while.
            match etcd.client().lease_time_to_live(lease.id, None).await {
                Ok(r) if r.ttl() <= 0 => {
                    return Kept::Lost(format!(
                        "etcd no longer knows lease {:x} (it expired during the outage, or \
                         etcd came back without its data)",
                        lease.id
                    ));
                }
                Ok(_) => {}
                Err(e) if e.to_string().contains("lease not found") => {
                    return Kept::Lost(format!("etcd no longer knows lease {:x}", lease.id));
                }
                Err(_) => continue,
            }
        }
        if stream.is_none() {
            match etcd.client().lease_keep_alive(lease.id).await {
                Ok(pair) => stream = Some(pair),
                Err(e) => {
                    note_unreachable(&mut unreachable_since, &lease.member.id, &e.to_string());
                    continue;
                }
            }
        }
        let Some((keeper, responses)) = stream.as_mut() else {
            continue;
        };
        let answer = match keeper.keep_alive().await {
            Ok(()) => tokio::time::timeout(period, responses.message()).await,
            Err(e) => Ok(Err(e)),
        };
        match answer {
            Ok(Ok(Some(r))) if r.ttl() <= 0 => {
                return Kept::Lost(format!(
                    "etcd says lease {:x} expired or is unknown (the process was stopped longer \
                     than the TTL, or etcd lost its data)",
                    lease.id
                ));
            }
            Ok(Ok(Some(_))) => {
                if let Some(since) = unreachable_since.take() {
                    tracing::info!(
                        node = %lease.member.id, after_s = since.elapsed().as_secs_f64(),
                        "cluster: etcd reachable again; the lease held"
                    );
                }
            }
            Ok(Ok(None)) => {
                stream = None;
                note_unreachable(
                    &mut unreachable_since,
                    &lease.member.id,
                    "keep-alive stream closed",
                );
            }
            Ok(Err(e)) => {
                stream = None;
                note_unreachable(&mut unreachable_since, &lease.member.id, &e.to_string());
            }
            Err(_) => {
                stream = None;
                note_unreachable(
                    &mut unreachable_since,
                    &lease.member.id,
                    "no keep-alive answer in time",
                );
            }
        }
    }
}

/// Logs the start of an outage once.
fn note_unreachable(since: &mut Option<Instant>, node: &str, why: &str) {
    if since.is_none() {
        *since = Some(Instant::now());
        tracing::warn!(
            node,
            reason = why,
            "cluster: etcd unreachable; keeping the registration and serving on (the lease \
             survives an etcd restart with its data)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::next_epoch;

    #[test]
    fn epochs_always_grow() {
        let a = next_epoch(0);
        assert!(a > 1_600_000_000_000, "wall clock in ms: {a}");
        let far = u64::MAX / 2;
        assert_eq!(next_epoch(far), far + 1);
        assert!(next_epoch(a) > a);
    }
}
