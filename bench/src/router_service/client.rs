//! The two services' clients: kvtier's `FindMatches` (tonic) and Dynamo's
//! JSON API (`/query`, `/query_by_hash`, `/health`) over a plain hyper
//! HTTP/1.1 connection, one connection per in-flight slot on both sides.
//!
//! [`kv_request`] and [`dyn_request`] build each service's request for a
//! query; the timed loops ([`super::measure`]) encode them once up front,
//! while [`kv_answer`] and [`dyn_answer`] decode both answers into the same
//! shape (per-worker overlap in blocks) for the cross-check.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kvtier_proto::v1::router_service_client::RouterServiceClient;
use kvtier_proto::v1::{FindMatchesRequest, PrefixQuery};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::queries::Query;
use super::{Mode, MODEL};

#[derive(Serialize)]
struct DynTokens<'a> {
    token_ids: &'a [u32],
    model_name: &'a str,
}

#[derive(Serialize)]
struct DynHashes<'a> {
    block_hashes: Vec<i64>,
    model_name: &'a str,
}

#[derive(Deserialize)]
struct DynAnswer {
    scores: HashMap<String, HashMap<String, u64>>,
}

/// kvtier's request for `q`: sequence hashes or token ids.
pub fn kv_request(q: &Query, mode: Mode) -> FindMatchesRequest {
    let (hashes, token_ids) = match mode {
        Mode::Hashes => (q.seq.clone(), Vec::new()),
        _ => (Vec::new(), q.tokens.clone()),
    };
    FindMatchesRequest {
        prefix: Some(PrefixQuery {
            model: MODEL.into(),
            hashes,
            token_ids,
        }),
    }
}

/// Dynamo's request for `q`: the path and the JSON body (local hashes or token ids).
pub fn dyn_request(q: &Query, mode: Mode) -> Result<(&'static str, Bytes)> {
    Ok(match mode {
        Mode::Hashes => (
            "/query_by_hash",
            Bytes::from(serde_json::to_vec(&DynHashes {
                block_hashes: q.local.iter().map(|&h| h as i64).collect(),
                model_name: MODEL,
            })?),
        ),
        _ => (
            "/query",
            Bytes::from(serde_json::to_vec(&DynTokens {
                token_ids: &q.tokens,
                model_name: MODEL,
            })?),
        ),
    })
}

/// A decoding `RouterService` client of the router at `addr`.
pub async fn kv_client(addr: &str) -> Result<RouterServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(RouterServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// One HTTP/1.1 connection to Dynamo's indexer.
pub struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends `body` as JSON; returns the status and the whole answer, undecoded.
    pub async fn call(&mut self, method: &str, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Per-worker overlap in blocks, from kvtier's answer.
pub async fn kv_answer(
    client: &mut RouterServiceClient<Channel>,
    q: &Query,
    mode: Mode,
    workers: usize,
) -> Result<Vec<u32>> {
    let resp = client.find_matches(kv_request(q, mode)).await?.into_inner();
    let mut out = vec![0; workers];
    for m in resp.workers {
        let i: usize = m
            .worker_id
            .strip_prefix("worker-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unexpected worker id {:?}", m.worker_id))?;
        if let Some(slot) = out.get_mut(i) {
            *slot = m.hbm_blocks;
        }
    }
    Ok(out)
}

/// Per-worker overlap in blocks, from Dynamo's answer (scores are in tokens).
pub async fn dyn_answer(
    http: &mut Http,
    q: &Query,
    mode: Mode,
    workers: usize,
    bs: usize,
) -> Result<Vec<u32>> {
    let (path, body) = dyn_request(q, mode)?;
    let (status, body) = http.call("POST", path, body).await?;
    if status != 200 {
        bail!(
            "Dynamo {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let answer: DynAnswer = serde_json::from_slice(&body)?;
    let mut out = vec![0; workers];
    for (id, ranks) in answer.scores {
        let i: usize = id.parse()?;
        let tokens: u64 = ranks.values().sum();
        if let Some(slot) = out.get_mut(i) {
            *slot = (tokens / bs as u64) as u32;
        }
    }
    Ok(out)
}
