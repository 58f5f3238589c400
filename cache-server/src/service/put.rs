//! `Put`: a client stream of blocks, one per message, each validated against
//! the namespace's configuration before it is stored.
//!
//! Slots: the stream holds one of its client's request slots from start to
//! end (per-client concurrency), and a server-wide slot from the moment its
//! first message has arrived in full (a stream that never sends one holds
//! none of the server's). Each message must arrive within the message
//! timeout (`--frame-timeout-ms`) of the previous one, else the stream ends
//! with DEADLINE_EXCEEDED: a client that stops sending mid-way holds its
//! slots at most that long. (Holding the server slot for the rest of the
//! stream, rather than per message, keeps the streams being read, and so
//! their buffered messages, to `--max-concurrent-requests`.)

use std::time::Duration;

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
    message_timeout: Duration,
) -> Result<PutResponse, Status> {
    let client = Client::of(&request);
    let _client_slot = state.client_slot("put", &client)?;
    let metadata = request.metadata().clone();
    let mut stream = request.into_inner();
    let mut namespace: Option<Namespace> = None;
    let mut response = PutResponse::default();
    let mut index = 0usize;
    let mut server_slot = None;
    loop {
        let message = match tokio::time::timeout(message_timeout, stream.next()).await {
            Ok(Some(message)) => message?,
            Ok(None) => break,
            Err(_) => {
                metrics::counter!(m::REQUESTS_REJECTED, "method" => "put_timeout").increment(1);
                tracing::debug!(client = %client.id, index, "Put stream stalled; ended");
                return Err(Status::deadline_exceeded(format!(
                    "message {index} of the Put stream did not arrive within {} ms \
                     (--frame-timeout-ms); the {index} blocks before it were stored",
                    message_timeout.as_millis()
                )));
            }
        };
        // The server's slot, once the first whole message is here.
        if server_slot.is_none() {
            server_slot = Some(state.server_slot("put").await?);
        }
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
