//! `Get` and `Lookup`: block-weighted hit accounting lives here, where the
//! namespace is known.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use kvtier_proto::v1::{GetRequest, GetResponse, LookupRequest, LookupResponse};

use super::session::Need;
use super::{store_status, wire_tier, BoxStream, ServiceState, MAX_HASHES_PER_REQUEST};
use crate::block::BlockKey;
use crate::metrics as m;
use kvtier_security::Client;
use std::sync::Arc;

/// Blocks in flight between the reader task and the client, per Get.
const GET_BUFFER: usize = 8;

fn check_hashes(method: &str, hashes: &[u64]) -> Result<(), Status> {
    if hashes.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{method}: `hashes` is empty; pass the sequence hashes of the blocks, in prefix order"
        )));
    }
    if hashes.len() > MAX_HASHES_PER_REQUEST {
        return Err(Status::invalid_argument(format!(
            "{method}: {} hashes in one request; the limit is {MAX_HASHES_PER_REQUEST}, split the request",
            hashes.len()
        )));
    }
    Ok(())
}

pub(super) async fn get(
    state: &Arc<ServiceState>,
    request: Request<GetRequest>,
) -> Result<BoxStream<GetResponse>, Status> {
    let client = Client::of(&request);
    let permit = state.admit("get", &client).await?;
    let ns = state.sessions.resolve(
        &request.get_ref().session_id,
        request.metadata(),
        &client,
        Need::Read,
    )?;
    let request = request.into_inner();
    check_hashes("Get", &request.hashes)?;
    let (tx, rx) = mpsc::channel(GET_BUFFER);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let _permit = permit;
        let ns_name = ns.name.clone();
        let priority = state.agents.priority_class_of(ns.id, &request.agent_id);
        let mut missed = false;
        for hash in request.hashes {
            metrics::counter!(m::BLOCK_LOOKUPS, "namespace" => ns_name.clone(), "priority" => priority, "op" => "get").increment(1);
            let result = if missed && request.stop_at_first_miss {
                Ok(None)
            } else {
                tokio::task::block_in_place(|| state.store.get(BlockKey::new(ns.id, hash)))
            };
            let charged = match &result {
                Ok(Some(hit)) => state.limits.charge(&client.id, hit.block.len()),
                _ => Ok(()),
            };
            let message = match (result, charged) {
                (Ok(Some(_)), Err(throttled)) => Err(Status::from(throttled)),
                (Ok(Some(hit)), Ok(())) => {
                    metrics::counter!(m::BLOCK_HITS, "namespace" => ns_name.clone(), "priority" => priority, "op" => "get", "tier" => hit.tier.as_str()).increment(1);
                    metrics::counter!(m::TRANSFER_BYTES, "direction" => "out")
                        .increment(hit.block.len());
                    Ok(GetResponse {
                        hash,
                        found: true,
                        tier: wire_tier(Some(hit.tier)) as i32,
                        payload: hit.block.payload,
                        parent_hash: hit.block.parent,
                    })
                }
                (Ok(None), _) => {
                    missed = true;
                    metrics::counter!(m::BLOCK_MISSES, "namespace" => ns_name.clone(), "priority" => priority, "op" => "get").increment(1);
                    Ok(GetResponse {
                        hash,
                        found: false,
                        tier: wire_tier(None) as i32,
                        payload: Default::default(),
                        parent_hash: None,
                    })
                }
                (Err(e), _) => Err(store_status(e)),
            };
            let failed = message.is_err();
            if tx.send(message).await.is_err() || failed {
                // The client went away, or the stream ended in an error.
                break;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

pub(super) async fn lookup(
    state: &ServiceState,
    request: Request<LookupRequest>,
) -> Result<LookupResponse, Status> {
    let client = Client::of(&request);
    let _permit = state.admit("lookup", &client).await?;
    let ns = state.sessions.resolve(
        &request.get_ref().session_id,
        request.metadata(),
        &client,
        Need::Read,
    )?;
    let request = request.into_inner();
    check_hashes("Lookup", &request.hashes)?;
    let keys: Vec<BlockKey> = request
        .hashes
        .iter()
        .map(|&h| BlockKey::new(ns.id, h))
        .collect();
    let tiers = state.store.lookup(&keys);
    let prefix_len = tiers.iter().take_while(|t| t.is_some()).count() as u32;
    let hits = tiers.iter().filter(|t| t.is_some()).count() as u64;
    metrics::counter!(m::BLOCK_LOOKUPS, "namespace" => ns.name.clone(), "priority" => "none", "op" => "lookup").increment(tiers.len() as u64);
    for tier in tiers.iter().flatten() {
        metrics::counter!(m::BLOCK_HITS, "namespace" => ns.name.clone(), "priority" => "none", "op" => "lookup", "tier" => tier.as_str()).increment(1);
    }
    metrics::counter!(m::BLOCK_MISSES, "namespace" => ns.name.clone(), "priority" => "none", "op" => "lookup").increment(tiers.len() as u64 - hits);
    let _ = store_status; // (lookup never touches tier storage)
    Ok(LookupResponse {
        prefix_len,
        tiers: tiers.into_iter().map(|t| wire_tier(t) as i32).collect(),
    })
}
