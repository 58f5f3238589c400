//! `WatchEvents`: forwards store events to a subscriber, optionally after a
//! snapshot of the resident blocks (`snapshot`: STORED per block, then SYNCED
//! with the last id the snapshot includes). A subscriber that falls behind
//! the bounded bus loses the oldest events and sees the gap in `event_id`,
//! its cue to resync (watch again with `snapshot`).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use kvtier_proto::v1::{CacheEvent, EventKind, WatchEventsRequest};

use kvtier_security::Client;

use super::{wire_tier, BoxStream, ServiceState};
use crate::events::StoreEventKind;
use crate::metrics as m;
use crate::namespace::forbidden_message;
use crate::store::ResidentBlock;

/// With authentication on, a non-admin caller must name a namespace it may
/// read (of its own tenant); unknown and forbidden names get the same answer.
fn authorize(
    state: &ServiceState,
    client: &Client,
    request: &WatchEventsRequest,
) -> Result<(), Status> {
    let Some(p) = client.principal.as_ref().filter(|p| !p.admin) else {
        return Ok(());
    };
    if request.namespace.is_empty() {
        return Err(Status::permission_denied(
            "watching every namespace needs an admin token: name a namespace",
        ));
    }
    let own = state
        .namespaces
        .get(&request.namespace)
        .is_some_and(|ns| ns.tenant.is_empty() || ns.tenant == p.tenant);
    if !own || !p.access(&request.namespace).read {
        return Err(Status::permission_denied(forbidden_message(
            &request.namespace,
        )));
    }
    Ok(())
}

pub(super) fn handle(
    state: &Arc<ServiceState>,
    client: &Client,
    request: WatchEventsRequest,
) -> Result<BoxStream<CacheEvent>, Status> {
    authorize(state, client, &request)?;
    let filter = if request.namespace.is_empty() {
        None
    } else {
        Some(
            state
                .namespaces
                .get(&request.namespace)
                .ok_or_else(|| {
                    let known: Vec<String> =
                        state.namespaces.all().into_iter().map(|n| n.name).collect();
                    Status::not_found(format!(
                        "unknown namespace '{}'; known namespaces: [{}]",
                        request.namespace,
                        known.join(", ")
                    ))
                })?
                .id,
        )
    };
    // A watch is long-lived: it takes one of its client's request slots (not
    // one of the server's) for as long as it streams.
    let slot = state.limits.acquire(&client.id).map_err(Status::from)?;
    let (mut events, snapshot) = if request.snapshot {
        let snap = state.store.subscribe_with_snapshot(filter);
        (snap.events, Some((snap.blocks, snap.last_ids)))
    } else {
        (state.store.subscribe(), None)
    };
    let (tx, rx) = mpsc::channel(1024);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let _slot = slot;
        metrics::gauge!(m::WATCHERS).increment(1.0);
        let mut names: HashMap<u32, String> = HashMap::new();
        // Per namespace, the last id the snapshot included: live events up to
        // it are already reflected (none are expected; kept for safety).
        let mut synced: HashMap<u32, u64> = HashMap::new();
        if let Some((blocks, last_ids)) = snapshot {
            refresh_names(&state, &mut names);
            match send_snapshot(&state, &tx, filter, &names, blocks, &last_ids).await {
                Some(ids) => synced = ids,
                None => {
                    metrics::gauge!(m::WATCHERS).decrement(1.0);
                    return;
                }
            }
        }
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(n)) => {
                    metrics::counter!(m::EVENTS_DROPPED).increment(n);
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            if filter.is_some_and(|id| id != event.key.namespace) {
                continue;
            }
            if synced
                .get(&event.key.namespace)
                .is_some_and(|&last| event.id <= last)
            {
                continue;
            }
            if !names.contains_key(&event.key.namespace) {
                refresh_names(&state, &mut names);
            }
            let message = CacheEvent {
                event_id: event.id,
                epoch: state.epoch,
                kind: match event.kind {
                    StoreEventKind::Stored => EventKind::Stored,
                    StoreEventKind::Moved => EventKind::Moved,
                    StoreEventKind::Removed => EventKind::Removed,
                } as i32,
                namespace: names.get(&event.key.namespace).cloned().unwrap_or_default(),
                hash: event.key.hash,
                tier: wire_tier(event.tier) as i32,
                parent_hash: event.parent,
            };
            if tx.send(Ok(message)).await.is_err() {
                break;
            }
        }
        metrics::gauge!(m::WATCHERS).decrement(1.0);
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Reloads the namespace id -> name map.
fn refresh_names(state: &ServiceState, names: &mut HashMap<u32, String>) {
    for ns in state.namespaces.all() {
        names.insert(ns.id, ns.name);
    }
}

/// Sends a snapshot: one STORED event per resident block, then one SYNCED
/// event per namespace (the watched one, or every known one), each carrying
/// the namespace's last event id. Returns those ids, or `None` when the
/// subscriber went away.
async fn send_snapshot(
    state: &ServiceState,
    tx: &mpsc::Sender<Result<CacheEvent, Status>>,
    filter: Option<u32>,
    names: &HashMap<u32, String>,
    blocks: Vec<ResidentBlock>,
    last_ids: &HashMap<u32, u64>,
) -> Option<HashMap<u32, u64>> {
    let namespaces: Vec<u32> = match filter {
        Some(id) => vec![id],
        None => {
            let mut ids: Vec<u32> = names.keys().copied().collect();
            ids.extend(blocks.iter().map(|b| b.key.namespace));
            ids.extend(last_ids.keys().copied());
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    };
    let last_of = |ns: u32| last_ids.get(&ns).copied().unwrap_or(0);
    let name_of = |ns: u32| names.get(&ns).cloned().unwrap_or_default();
    for block in blocks {
        let message = CacheEvent {
            event_id: last_of(block.key.namespace),
            epoch: state.epoch,
            kind: EventKind::Stored as i32,
            namespace: name_of(block.key.namespace),
            hash: block.key.hash,
            tier: wire_tier(Some(block.tier)) as i32,
            parent_hash: block.parent,
        };
        tx.send(Ok(message)).await.ok()?;
    }
    let mut synced = HashMap::with_capacity(namespaces.len());
    for ns in namespaces {
        let last = last_of(ns);
        synced.insert(ns, last);
        let message = CacheEvent {
            event_id: last,
            epoch: state.epoch,
            kind: EventKind::Synced as i32,
            namespace: name_of(ns),
            hash: 0,
            tier: kvtier_proto::v1::Tier::None as i32,
            parent_hash: None,
        };
        tx.send(Ok(message)).await.ok()?;
    }
    Some(synced)
}
