//! `Stats`: tier occupancy and namespaces.

use kvtier_proto::v1::{NamespaceStats, StatsResponse, TierStats};

use super::{wire_tier, ServiceState};

pub(super) fn handle(state: &ServiceState) -> StatsResponse {
    let per_ns = state.store.blocks_per_namespace();
    StatsResponse {
        tiers: state
            .store
            .usage()
            .into_iter()
            .map(|u| TierStats {
                tier: wire_tier(Some(u.tier)) as i32,
                capacity_bytes: u.capacity_bytes,
                used_bytes: u.used_bytes,
                blocks: u.blocks,
            })
            .collect(),
        namespaces: state
            .namespaces
            .all()
            .into_iter()
            .map(|ns| NamespaceStats {
                blocks: per_ns.get(&ns.id).copied().unwrap_or(0),
                name: ns.name,
                config: Some(ns.config),
            })
            .collect(),
        checksum_failures: state.store.checksum_failures(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
