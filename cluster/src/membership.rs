//! The client side of membership: a snapshot of `{prefix}/nodes/` followed
//! by a watch from the snapshot's revision, kept in a
//! [`tokio::sync::watch`] channel that every router, agent or bench reads.
//!
//! While etcd is unreachable the last known membership stays in force (the
//! data path keeps working on it); the task retries, and on success takes a
//! fresh snapshot, so nothing that changed during the outage is missed,
//! whether etcd came back with its data or without.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::etcd::Etcd;
use crate::member::Member;
use crate::placement::Placement;
use crate::ClusterError;

/// First pause after a failed snapshot or a broken watch.
const RETRY: Duration = Duration::from_millis(200);
/// Longest pause between attempts.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// The members known at one etcd revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Membership {
    /// Members by node id.
    pub members: BTreeMap<String, Member>,
    /// etcd revision this view is current as of (0: nothing read yet).
    pub revision: i64,
    /// Whether the view came from etcd at all (false until the first snapshot).
    pub synced: bool,
}

impl Membership {
    /// Members that take writes.
    pub fn active(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.is_active())
    }

    /// Placement of new blocks over the active members.
    pub fn placement(&self) -> Placement {
        Placement::new(self.members.values())
    }

    /// Placement over every member, draining ones too: the ranking reads
    /// follow ([`crate::sharded::read_order`]).
    pub fn read_placement(&self) -> Placement {
        Placement::over_all(self.members.values())
    }

    /// Ids of all members, sorted.
    pub fn ids(&self) -> Vec<&str> {
        self.members.keys().map(String::as_str).collect()
    }
}

/// A running membership watch; clones share it, and it stops when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct MembershipWatch {
    view: watch::Receiver<Arc<Membership>>,
    _task: Arc<AbortOnDrop>,
}

/// Aborts the watch task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MembershipWatch {
    /// Starts watching `etcd`'s membership. Never fails: until etcd answers
    /// the view is empty and unsynced.
    pub fn start(etcd: Etcd) -> Self {
        let (tx, view) = watch::channel(Arc::new(Membership::default()));
        let task = Arc::new(AbortOnDrop(tokio::spawn(follow(etcd, tx))));
        Self { view, _task: task }
    }

    /// The membership now.
    pub fn current(&self) -> Arc<Membership> {
        Arc::clone(&self.view.borrow())
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Membership>> {
        self.view.clone()
    }

    /// Waits up to `timeout` for a membership that satisfies `ok`; returns
    /// the last one seen either way, and whether it did.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        ok: impl Fn(&Membership) -> bool,
    ) -> (Arc<Membership>, bool) {
        let mut rx = self.view.clone();
        let found = tokio::time::timeout(timeout, rx.wait_for(|m| ok(m))).await;
        let met = matches!(found, Ok(Ok(_)));
        (self.current(), met)
    }
}

/// Snapshot, watch, and on any failure start over after a pause.
async fn follow(etcd: Etcd, tx: watch::Sender<Arc<Membership>>) {
    let mut pause = RETRY;
    let mut failing = false;
    loop {
        let err = sync(&etcd, &tx, &mut pause, &mut failing).await;
        if !failing {
            failing = true;
            tracing::warn!(
                error = %err,
                members = tx.borrow().members.len(),
                "cluster: membership watch interrupted; keeping the last known membership and retrying"
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

/// One snapshot and the watch after it; returns why it ended.
async fn sync(
    etcd: &Etcd,
    tx: &watch::Sender<Arc<Membership>>,
    pause: &mut Duration,
    failing: &mut bool,
) -> ClusterError {
    let prefix = etcd.url().nodes_prefix();
    let mut client = etcd.client();
    let snapshot = match client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
    {
        Ok(r) => r,
        Err(e) => return etcd.error("reading the membership", e),
    };
    let revision = snapshot.header().map_or(0, |h| h.revision());
    let mut members = BTreeMap::new();
    for kv in snapshot.kvs() {
        if let Some(m) = parse(&prefix, kv.key(), kv.value()) {
            members.insert(m.id.clone(), m);
        }
    }
    publish(tx, members.clone(), revision);
    let mut stream = match client
        .watch(
            prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return etcd.error("watching the membership", e),
    };
    if *failing {
        *failing = false;
        tracing::info!(
            members = members.len(),
            revision,
            "cluster: membership watch resumed"
        );
    }
    *pause = RETRY;
    loop {
        let response = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return etcd.protocol("the membership watch closed"),
            Err(e) => return etcd.error("watching the membership", e),
        };
        if response.canceled() {
            return etcd.protocol(format!(
                "the membership watch was cancelled ({}; compacted at {})",
                response.cancel_reason(),
                response.compact_revision()
            ));
        }
        let mut changed = false;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(id) = node_id(&prefix, kv.key()) else {
                continue;
            };
            match event.event_type() {
                EventType::Put => {
                    if let Some(m) = parse(&prefix, kv.key(), kv.value()) {
                        members.insert(m.id.clone(), m);
                        changed = true;
                    }
                }
                EventType::Delete => changed |= members.remove(id).is_some(),
            }
        }
        let revision = response.header().map_or(revision, |h| h.revision());
        if changed {
            publish(tx, members.clone(), revision);
        }
    }
}

fn publish(tx: &watch::Sender<Arc<Membership>>, members: BTreeMap<String, Member>, revision: i64) {
    let next = Membership {
        members,
        revision,
        synced: true,
    };
    tx.send_if_modified(|current| {
        if current.members == next.members && current.synced {
            return false;
        }
        *current = Arc::new(next);
        true
    });
}

/// The node id in a key under `prefix`.
fn node_id<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(key).ok()?.strip_prefix(prefix)
}

/// A record, or `None` (logged) when it is not a valid member or its id
/// disagrees with its key.
fn parse(prefix: &str, key: &[u8], value: &[u8]) -> Option<Member> {
    let id = node_id(prefix, key)?;
    match Member::from_json(value) {
        Ok(m) if m.id == id => Some(m),
        Ok(m) => {
            tracing::warn!(key = id, record_id = %m.id, "cluster: ignoring a member whose id differs from its key");
            None
        }
        Err(e) => {
            tracing::warn!(key = id, error = %e, "cluster: ignoring a malformed member record");
            None
        }
    }
}
