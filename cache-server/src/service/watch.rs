//! `WatchEvents`: forwards store events to a subscriber. A subscriber that
//! falls behind the bounded bus loses the oldest events and sees the gap in
//! `event_id`, its cue to resync.

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
    let mut events = state.store.subscribe();
    let (tx, rx) = mpsc::channel(1024);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let _slot = slot;
        metrics::gauge!(m::WATCHERS).increment(1.0);
        let mut names: HashMap<u32, String> = HashMap::new();
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
            if !names.contains_key(&event.key.namespace) {
                for ns in state.namespaces.all() {
                    names.insert(ns.id, ns.name);
                }
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
