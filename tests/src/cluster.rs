//! Servers joined into one cluster through a real etcd (the one
//! `scripts/setup.sh` installs), and the client's view of it.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use kvtier_cluster::{ClusterUrl, Etcd, MembershipWatch};
use kvtier_testkit::{etcd, find_etcd, prereq, EtcdProcess};

use crate::ServerProcess;

/// Lease TTL of the test servers: short, so that a dead node leaves fast.
pub const TTL_S: u64 = 2;

/// A real etcd on loopback, or `None` after reporting it missing (a
/// failure in CI).
pub fn start_etcd() -> Option<EtcdProcess> {
    let Some(bin) = find_etcd() else {
        prereq::missing("an etcd binary", etcd::HOW_TO_GET);
        return None;
    };
    Some(EtcdProcess::start(&bin).expect("etcd starts"))
}

/// The flags that put a server in the cluster at `url`, as node `id` (or the
/// id its data directory holds), with the test TTL.
pub fn cluster_args(url: &str, id: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--cluster".to_string(),
        url.to_string(),
        "--cluster-lease-ttl-s".to_string(),
        TTL_S.to_string(),
    ];
    if let Some(id) = id {
        args.extend(["--node-id".to_string(), id.to_string()]);
    }
    args
}

/// Starts a server in the cluster at `url` with `extra` flags.
pub fn start_node(
    url: &str,
    data: &Path,
    id: Option<&str>,
    extra: &[&str],
) -> Result<ServerProcess> {
    let args = cluster_args(url, id);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    ServerProcess::start(data, &all)
}

/// A client's membership watch on the cluster at `url`.
pub async fn watch(url: &str) -> Result<MembershipWatch> {
    let url = ClusterUrl::parse(url)?;
    let etcd = Etcd::connect(&url, Duration::from_secs(2)).await?;
    Ok(MembershipWatch::start(etcd))
}
