//! Cache sources for a cluster of cache servers (`--cluster etcd://...`):
//! one `WatchEvents` stream per member of the membership (the cache source
//! of [`super::cache`], one per shard), and the merge of their views into
//! the index's single cache view.
//!
//! The index knows one cache (a block is cached in host or disk, or not).
//! [`ShardViews`] keeps which shard holds which block, so that a shard's
//! snapshot replaces only that shard's blocks, and a shard that leaves the
//! membership takes only its own blocks out of the index; a block held by
//! two shards (the previous and the new owner, after a copy-on-read) is
//! cached while either holds it, in the better of their tiers. It costs a
//! hash-map entry per (block, shard) beside the index.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kvtier_cluster::{Member, MembershipWatch};
use kvtier_proto::v1::{HashingConfig, Tier};
use kvtier_security::ServerClient;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cache::{spawn_cache_source_into, CacheSourceConfig};
use super::state::CacheState;
use super::sync::CacheStep;
use crate::index::{SharedIndex, UpdateIndex};

/// Which shard holds which block, and the merge into one cache view.
#[derive(Debug, Default)]
pub struct ShardViews {
    /// shard id -> hash -> (parent, tier); only blocks present.
    shards: HashMap<String, HashMap<u64, (Option<u64>, Tier)>>,
}

/// The better of two tiers for routing (memory over disk over absent).
fn better(a: Tier, b: Tier) -> Tier {
    let rank = |t: Tier| match t {
        Tier::Gpu | Tier::Host => 2,
        Tier::Disk => 1,
        Tier::None => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

impl ShardViews {
    /// The merged tier of `hash` over every shard.
    pub fn merged(&self, hash: u64) -> Tier {
        self.shards
            .values()
            .filter_map(|blocks| blocks.get(&hash).map(|&(_, t)| t))
            .fold(Tier::None, better)
    }

    /// Blocks shard `id` holds.
    pub fn blocks(&self, id: &str) -> usize {
        self.shards.get(id).map_or(0, HashMap::len)
    }

    /// Ids of the shards with a view, sorted.
    pub fn shard_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.shards.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn set(
        &mut self,
        index: &mut impl UpdateIndex,
        shard: &str,
        hash: u64,
        parent: Option<u64>,
        tier: Tier,
    ) {
        let blocks = self.shards.entry(shard.to_string()).or_default();
        if tier == Tier::None {
            blocks.remove(&hash);
        } else {
            blocks.insert(hash, (parent, tier));
        }
        index.cache_set(hash, parent, self.merged(hash));
    }

    /// Applies shard `shard`'s step to its view and the merged result to
    /// `index`; false when there was nothing to apply.
    pub fn apply(&mut self, index: &mut impl UpdateIndex, shard: &str, step: &CacheStep) -> bool {
        match step {
            CacheStep::Set((hash, parent, tier)) => self.set(index, shard, *hash, *parent, *tier),
            CacheStep::Replace(blocks) => {
                let old = self.shards.remove(shard).unwrap_or_default();
                let fresh: HashMap<u64, (Option<u64>, Tier)> = blocks
                    .iter()
                    .filter(|(_, _, t)| *t != Tier::None)
                    .map(|&(h, p, t)| (h, (p, t)))
                    .collect();
                self.shards.insert(shard.to_string(), HashMap::new());
                for (hash, (parent, _)) in old {
                    if !fresh.contains_key(&hash) {
                        index.cache_set(hash, parent, self.merged(hash));
                    }
                }
                // Parents first, as the snapshot orders them.
                for &(hash, parent, tier) in blocks {
                    self.set(index, shard, hash, parent, tier);
                }
            }
            CacheStep::Skip | CacheStep::Resync(_) => return false,
        }
        true
    }

    /// Forgets shard `shard` (it left the membership): its blocks leave
    /// the index unless another shard holds them. Returns how many it held.
    pub fn drop_shard(&mut self, index: &mut impl UpdateIndex, shard: &str) -> usize {
        let Some(old) = self.shards.remove(shard) else {
            return 0;
        };
        let n = old.len();
        for (hash, (parent, _)) in old {
            index.cache_set(hash, parent, self.merged(hash));
        }
        n
    }
}

/// Shared by a model's shard sources.
pub type SharedShardViews = Arc<Mutex<ShardViews>>;

/// What a model's cluster sources connect with.
#[derive(Debug, Clone)]
pub struct ClusterSourceConfig {
    /// The model's namespace.
    pub namespace: String,
    /// Its hashing configuration.
    pub hashing: HashingConfig,
    /// TLS and token, as for one `--cache-server` (each member is dialled as
    /// `https://<grpc>` with TLS, else `http://<grpc>`).
    pub security: ServerClient,
}

struct Running {
    grpc: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Spawns the task that keeps one cache source per member of `membership`
/// for `config.namespace`: a source starts when a member appears, and stops
/// (its blocks dropped from the index) when the member leaves or moves to
/// another address. Runs until `shutdown` turns true.
pub fn spawn_cluster_sources(
    config: ClusterSourceConfig,
    membership: MembershipWatch,
    index: SharedIndex,
    views: SharedShardViews,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut members = membership.subscribe();
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        loop {
            let now: BTreeMap<String, Member> = members.borrow_and_update().members.clone();
            // Leavers (or a member that moved): stop, then drop its blocks.
            let gone: Vec<String> = running
                .iter()
                .filter(|(id, r)| now.get(*id).is_none_or(|m| m.grpc != r.grpc))
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                if let Some(r) = running.remove(&id) {
                    let _ = r.stop.send(true);
                    let _ = r.task.await;
                    let dropped = views.lock().drop_shard(&mut index.write(), &id);
                    tracing::info!(namespace = %config.namespace, shard = %id, blocks = dropped,
                        "cluster: shard left the membership; its blocks dropped from the index");
                }
            }
            for (id, member) in &now {
                if running.contains_key(id) {
                    continue;
                }
                let scheme = if config.security.tls() {
                    "https"
                } else {
                    "http"
                };
                let source = CacheSourceConfig {
                    security: config.security.clone(),
                    client_name: format!("kvtier-router/shard-{id}"),
                    ..CacheSourceConfig::new(
                        format!("{scheme}://{}", member.grpc),
                        &config.namespace,
                        config.hashing.clone(),
                    )
                };
                let (stop, stop_rx) = watch::channel(false);
                let task = spawn_cache_source_into(
                    source,
                    index.clone(),
                    CacheState::default(),
                    Some((id.clone(), Arc::clone(&views))),
                    stop_rx,
                );
                tracing::info!(namespace = %config.namespace, shard = %id, grpc = %member.grpc,
                    "cluster: watching a shard's events");
                running.insert(
                    id.clone(),
                    Running {
                        grpc: member.grpc.clone(),
                        stop,
                        task,
                    },
                );
            }
            tokio::select! {
                changed = members.changed() => if changed.is_err() { break },
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        for (_, r) in running {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::LocalityIndex;

    fn set(h: u64, p: Option<u64>, t: Tier) -> CacheStep {
        CacheStep::Set((h, p, t))
    }

    #[test]
    fn shards_merge_and_a_leaver_takes_only_its_blocks() {
        let mut index = LocalityIndex::new();
        let mut views = ShardViews::default();
        // a holds 1 <- 2, b holds 3 (child of 2) and 4.
        views.apply(&mut index, "a", &set(1, None, Tier::Host));
        views.apply(&mut index, "a", &set(2, Some(1), Tier::Host));
        views.apply(&mut index, "b", &set(3, Some(2), Tier::Disk));
        views.apply(&mut index, "b", &set(4, Some(3), Tier::Host));
        let m = index.find_matches(&[1, 2, 3, 4]);
        assert_eq!(m.cache_prefix_blocks, 4, "blocks on both shards");
        assert_eq!(index.stats().cache_blocks, 4);

        // Block 2 copied to b (disk there): held by both, best tier wins.
        views.apply(&mut index, "b", &set(2, Some(1), Tier::Disk));
        assert_eq!(views.merged(2), Tier::Host);
        // a forgets 2: b still holds it.
        views.apply(&mut index, "a", &set(2, None, Tier::None));
        assert_eq!(views.merged(2), Tier::Disk);
        assert_eq!(index.find_matches(&[1, 2, 3, 4]).cache_prefix_blocks, 4);

        // b leaves: 2, 3, 4 go; 1 stays.
        assert_eq!(views.drop_shard(&mut index, "b"), 3);
        assert_eq!(index.find_matches(&[1, 2, 3, 4]).cache_prefix_blocks, 1);
        assert_eq!(index.stats().cache_blocks, 1);
        assert_eq!(views.drop_shard(&mut index, "b"), 0);
        assert_eq!(views.shard_ids(), ["a"]);
    }

    #[test]
    fn a_snapshot_replaces_only_its_shards_blocks() {
        let mut index = LocalityIndex::new();
        let mut views = ShardViews::default();
        views.apply(&mut index, "a", &set(1, None, Tier::Host));
        views.apply(&mut index, "a", &set(2, Some(1), Tier::Host));
        views.apply(&mut index, "b", &set(3, Some(2), Tier::Host));
        views.apply(&mut index, "b", &set(9, None, Tier::Host));
        // b's snapshot: 3 and 4, no longer 9.
        views.apply(
            &mut index,
            "b",
            &CacheStep::Replace(vec![(3, Some(2), Tier::Disk), (4, Some(3), Tier::Host)]),
        );
        assert_eq!(index.find_matches(&[1, 2, 3, 4]).cache_prefix_blocks, 4);
        assert_eq!(index.find_matches(&[9]).cache_prefix_blocks, 0);
        assert_eq!(views.blocks("a"), 2);
        assert_eq!(views.blocks("b"), 2);
        assert!(!views.apply(&mut index, "b", &CacheStep::Skip));
    }
}
