//! The cache server's data-plane client (frames and pipelined PUT/GET), as
//! the server crate ships it.

use kvtier_cache_server::dataplane::client;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;

pub use client::DataClient;

/// One data-plane connection per gRPC session.
pub async fn connect(
    addr: SocketAddr,
    sessions: &[String],
) -> Result<Vec<DataClient<tokio::net::TcpStream>>> {
    let mut out = Vec::new();
    for s in sessions {
        out.push(DataClient::connect(addr, s, "", "").await?);
    }
    Ok(out)
}

/// Pipelined PUTs of `hashes` split over the connections (one task each);
/// returns the elapsed time and the connections.
pub async fn put(
    clients: Vec<DataClient<tokio::net::TcpStream>>,
    hashes: &[u64],
    payload: &Bytes,
) -> Result<(Duration, Vec<DataClient<tokio::net::TcpStream>>)> {
    let per = hashes.len().div_ceil(clients.len());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, chunk) in clients.into_iter().zip(hashes.chunks(per)) {
        let blocks: Vec<(u64, Option<u64>, Bytes)> =
            chunk.iter().map(|&h| (h, None, payload.clone())).collect();
        tasks.push(tokio::spawn(async move {
            let acks = client.put_many(&blocks).await?;
            if acks.iter().any(|a| a.already_present) {
                bail!("data-plane put found blocks already present");
            }
            Ok::<_, anyhow::Error>(client)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await??);
    }
    Ok((started.elapsed(), clients))
}

/// GETs of `hashes` split over the connections (one GET frame each); checks sizes.
pub async fn get(
    clients: Vec<DataClient<tokio::net::TcpStream>>,
    hashes: &[u64],
    block: usize,
) -> Result<(Duration, Vec<DataClient<tokio::net::TcpStream>>)> {
    let per = hashes.len().div_ceil(clients.len());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, chunk) in clients.into_iter().zip(hashes.chunks(per)) {
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            // Each payload is checked and dropped as it arrives, as the
            // gRPC measurement does with its stream.
            let mut bad = None;
            client
                .get_many_each(&chunk, false, |r| {
                    if r.payload.as_ref().map(|p| p.len()) != Some(block) {
                        bad.get_or_insert(r.hash);
                    }
                })
                .await?;
            if let Some(h) = bad {
                return Err(anyhow!("data-plane block {h:#x} missing or short"));
            }
            Ok::<_, anyhow::Error>(client)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await??);
    }
    Ok((started.elapsed(), clients))
}
