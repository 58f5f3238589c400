//! `Stats`: tier occupancy and namespaces. With authentication on, a
//! non-admin caller sees only the namespaces it may read and no tier
//! totals (which would show other tenants' activity).

use kvtier_proto::v1::{NamespaceStats, StatsResponse, TierStats};

use kvtier_security::Client;

use super::{wire_tier, ServiceState};

pub(super) fn handle(state: &ServiceState, client: &Client) -> StatsResponse {
    let per_ns = state.store.blocks_per_namespace();
    let restricted = client.principal.as_ref().filter(|p| !p.admin);
    let tiers = if restricted.is_some() {
        Vec::new()
    } else {
        state.store.usage()
    };
    StatsResponse {
        tiers: tiers
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
            .filter(|ns| {
                restricted.is_none_or(|p| {
                    p.access(&ns.name).read && (ns.tenant.is_empty() || ns.tenant == p.tenant)
                })
            })
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
