//! `Put`: a client stream of blocks, one per message, each validated against
//! the namespace's configuration before it is stored.

use futures::StreamExt;
use tonic::{Request, Status, Streaming};

use kvtier_proto::v1::{BlockPlacement, PutRequest, PutResponse};

use super::session::Need;
use super::{store_status, wire_tier, ServiceState};
use crate::block::{Block, BlockKey};
use crate::metrics as m;
use crate::namespace::Namespace;
use kvtier_security::Client;

pub(super) async fn handle(
    state: &ServiceState,
    request: Request<Streaming<PutRequest>>,
) -> Result<PutResponse, Status> {
    let client = Client::of(&request);
    let _permit = state.admit("put", &client).await?;
    let metadata = request.metadata().clone();
    let mut stream = request.into_inner();
    let mut namespace: Option<Namespace> = None;
    let mut response = PutResponse::default();
    let mut index = 0usize;
    while let Some(message) = stream.next().await {
        let message = message?;
        let ns = match &namespace {
            Some(ns) => ns,
            None => namespace.insert(state.sessions.resolve(
                &message.session_id,
                &metadata,
                &client,
                Need::Write,
            )?),
        };
        let block = message.block.ok_or_else(|| {
            Status::invalid_argument(format!(
                "message {index} of the Put stream carries no block"
            ))
        })?;
        let len = block.payload.len() as u64;
        if len != ns.config.block_bytes {
            return Err(Status::invalid_argument(format!(
                "block {index} ({:#018x}) has {len} payload bytes but namespace '{}' is configured \
                 with block_bytes={} (kv_layout {:?}); send whole blocks of exactly that size",
                block.hash, ns.name, ns.config.block_bytes, ns.config.kv_layout
            )));
        }
        state.limits.charge(&client.id, len)?;
        let key = BlockKey::new(ns.id, block.hash);
        // (The payload is a view into the decoder's buffer; each tier copies
        // it into memory of its own.)
        let stored = Block {
            parent: block.parent_hash,
            payload: block.payload,
        };
        let outcome =
            tokio::task::block_in_place(|| state.store.put(key, stored)).map_err(store_status)?;
        metrics::counter!(m::TRANSFER_BYTES, "direction" => "in").increment(len);
        if outcome.already_present {
            response.already_present += 1;
        } else {
            response.stored += 1;
        }
        response.placements.push(BlockPlacement {
            hash: block.hash,
            tier: wire_tier(Some(outcome.tier)) as i32,
            already_present: outcome.already_present,
        });
        index += 1;
    }
    if index == 0 {
        return Err(Status::invalid_argument(
            "empty Put stream: send at least one message with a session_id and a block",
        ));
    }
    Ok(response)
}
