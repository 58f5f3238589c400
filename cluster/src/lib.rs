//! kvtier-cluster: many cache servers as one tier, with membership and
//! namespace configurations in etcd (no consensus code of our own).
//!
//! Each `kvtier-server` started with `--cluster etcd://...` keeps a
//! [`Member`] record under its own lease ([`registration`]); every client
//! follows the records ([`membership`]) and computes a block's owner itself
//! by weighted rendezvous hashing of its sequence hash ([`placement`]): no
//! lookup service, no per-block directory.
//!
//! # Layout
//! - [`url`]: parsing `--cluster etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
//! - [`member`]: the membership record (JSON in etcd) and node ids.
//! - [`placement`]: weighted rendezvous placement (pure, no I/O).
//! - [`etcd`]: the shared etcd connection; create-if-absent transactions
//!   (used for namespace configurations).
//! - [`registration`]: a server's lease, keep-alive and re-registration.
//! - [`membership`]: a client's snapshot + watch of the members.
//! - [`sharded`]: a client of every shard: batches split by owner and sent
//!   in parallel, prefix lookups combined, reads that follow the ranking
//!   during a join's warm-up or a drain, a failed shard a miss.
//! - [`ClusterError`]: what the above can fail with.

mod error;
pub mod etcd;
pub mod member;
pub mod membership;
pub mod placement;
pub mod registration;
pub mod sharded;
pub mod url;

pub use error::ClusterError;
pub use etcd::{Claim, Etcd};
pub use member::{validate_node_id, Member, MemberState};
pub use membership::{Membership, MembershipWatch};
pub use placement::Placement;
pub use registration::{Registration, RegistrationConfig, RegistrationStatus};
pub use sharded::{PayloadRoute, PutSummary, ShardedClient, ShardedOptions, ShardedStats};
pub use url::ClusterUrl;
