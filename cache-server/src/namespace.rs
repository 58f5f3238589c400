//! Namespaces and their hashing configurations.
//!
//! The first successful handshake of a namespace fixes its configuration; it
//! is persisted in the disk tier's settings so that it survives restarts. Any
//! later handshake with a different configuration is refused with both
//! configurations spelled out: a silent mismatch is the most common cause of a
//! 0% hit rate in KV-cache tiers.

use std::collections::HashMap;
use std::fmt::Write as _;

use parking_lot::RwLock;
use prost::Message;

use kvtier_proto::hashing::{effective_seed, DEFAULT_SEED};
use kvtier_proto::v1::HashingConfig;

use crate::block::NamespaceId;
use crate::tier::disk::DiskTier;
use crate::tier::TierError;

const SETTINGS_PREFIX: &[u8] = b"ns/";
/// `nst/<name>` → the tenant that owns the namespace (absent: no tenant).
const TENANT_PREFIX: &[u8] = b"nst/";

/// Why a handshake was refused.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The request is malformed (bad name, zero block size, ...).
    #[error("{0}")]
    Invalid(String),
    /// The namespace exists with another configuration.
    #[error("{0}")]
    Mismatch(String),
    /// The namespace belongs to another tenant. The message is the same
    /// whether or not the namespace exists, so it reveals nothing.
    #[error("{0}")]
    Forbidden(String),
    /// The namespace is not in the server's allow-list.
    #[error("unknown namespace '{name}': this server only accepts {allowed}")]
    NotAllowed {
        /// Requested name.
        name: String,
        /// The allow-list, for the message.
        allowed: String,
    },
    /// Persisting the configuration failed.
    #[error("cannot persist namespace configuration: {0}")]
    Storage(#[from] TierError),
    /// The cluster's configuration store cannot be reached, so the
    /// namespace cannot be created cluster-wide (see [`crate::cluster`]).
    #[error("{0}")]
    Unavailable(String),
}

/// A namespace as the server knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    /// Store-internal id, part of every block key.
    pub id: NamespaceId,
    /// Name clients use.
    pub name: String,
    /// Normalised configuration (seed 0 replaced by the default).
    pub config: HashingConfig,
    /// Seed with the salt (and the tenant, when there is one) folded in.
    pub effective_seed: u64,
    /// Tenant that owns the namespace; empty when it was created without
    /// authentication. Folded into the effective seed, so two tenants with
    /// identical prompts never compute the same block hashes.
    pub tenant: String,
}

/// The salt actually hashed: the configured salt plus the tenant, if any.
pub fn tenant_salt(tenant: &str, salt: &str) -> String {
    if tenant.is_empty() {
        salt.to_string()
    } else {
        format!("{salt}\u{1f}tenant={tenant}")
    }
}

/// Decodes a persisted namespace record: 4 bytes of id (LE), then the
/// `HashingConfig` protobuf. `None` when malformed.
pub fn decode_record(value: &[u8]) -> Option<(NamespaceId, HashingConfig)> {
    if value.len() < 4 {
        return None;
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&value[..4]);
    let config = HashingConfig::decode(&value[4..]).ok()?;
    Some((u32::from_le_bytes(id), config))
}

/// All namespaces of a server.
#[derive(Debug, Default)]
pub struct NamespaceRegistry {
    by_name: RwLock<HashMap<String, Namespace>>,
    allowed: Vec<String>,
    max_block_bytes: u64,
}

fn normalise(mut config: HashingConfig) -> HashingConfig {
    if config.seed == 0 {
        config.seed = DEFAULT_SEED;
    }
    config
}

/// One line describing a configuration, for error messages.
pub fn describe(config: &HashingConfig) -> String {
    format!(
        "block_tokens={} seed={} salt={:?} block_bytes={} kv_layout={:?} model={:?}",
        config.block_tokens,
        config.seed,
        config.salt,
        config.block_bytes,
        config.kv_layout,
        config.model
    )
}

fn differing_fields(a: &HashingConfig, b: &HashingConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.block_tokens != b.block_tokens {
        out.push("block_tokens");
    }
    if a.seed != b.seed {
        out.push("seed");
    }
    if a.salt != b.salt {
        out.push("salt");
    }
    if a.block_bytes != b.block_bytes {
        out.push("block_bytes");
    }
    if a.kv_layout != b.kv_layout {
        out.push("kv_layout");
    }
    if a.model != b.model {
        out.push("model");
    }
    out
}

/// Checks a namespace name: 1 to 128 characters of `[A-Za-z0-9._:/-]`.
pub fn validate_name(name: &str) -> Result<(), NamespaceError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NamespaceError::Invalid(format!(
            "namespace {name:?} is not valid: use 1 to 128 characters of A-Z a-z 0-9 . _ : / -"
        )))
    }
}

/// The one message for every refused namespace, whether or not it exists.
pub fn forbidden_message(name: &str) -> String {
    format!(
        "permission denied for namespace '{name}': your token grants no access to it \
         (ask for a grant in the server's token file)"
    )
}

impl NamespaceRegistry {
    /// A registry; `allowed` empty means any valid name may be created.
    pub fn new(allowed: Vec<String>, max_block_bytes: u64) -> Self {
        Self {
            by_name: RwLock::new(HashMap::new()),
            allowed,
            max_block_bytes,
        }
    }

    /// Loads the namespaces persisted in `disk`.
    pub fn load(&self, disk: &DiskTier) -> Result<usize, NamespaceError> {
        let mut map = self.by_name.write();
        let tenants: HashMap<String, String> = disk
            .settings_with_prefix(TENANT_PREFIX)?
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k[TENANT_PREFIX.len()..]).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        for (key, value) in disk.settings_with_prefix(SETTINGS_PREFIX)? {
            let name = String::from_utf8_lossy(&key[SETTINGS_PREFIX.len()..]).into_owned();
            let Some((id, config)) = decode_record(&value) else {
                tracing::warn!(namespace = %name, "skipping malformed namespace record");
                continue;
            };
            let tenant = tenants.get(&name).cloned().unwrap_or_default();
            let seed = effective_seed(config.seed, &tenant_salt(&tenant, &config.salt));
            map.insert(
                name.clone(),
                Namespace {
                    id,
                    name,
                    config,
                    effective_seed: seed,
                    tenant,
                },
            );
        }
        Ok(map.len())
    }

    /// Validates `config` for `name` and returns the namespace, creating it
    /// (and persisting it in `disk`) when it does not exist yet. The bool is
    /// true when it was created.
    pub fn handshake(
        &self,
        name: &str,
        config: Option<HashingConfig>,
        disk: Option<&DiskTier>,
    ) -> Result<(Namespace, bool), NamespaceError> {
        self.handshake_as(name, config, None, disk)
    }

    /// [`NamespaceRegistry::handshake`] on behalf of `tenant`: a namespace
    /// created here is bound to that tenant; one bound to another tenant is
    /// [`NamespaceError::Forbidden`] (checked before the configuration, so
    /// nothing about it is revealed). `None`: authentication is off.
    pub fn handshake_as(
        &self,
        name: &str,
        config: Option<HashingConfig>,
        tenant: Option<&str>,
        disk: Option<&DiskTier>,
    ) -> Result<(Namespace, bool), NamespaceError> {
        let config = self.validate_request(name, config)?;
        if let Some(existing) = self.by_name.read().get(name) {
            Self::check_tenant(existing, tenant)?;
            return Self::check(existing, &config).map(|()| (existing.clone(), false));
        }
        self.check_allowed(name)?;
        let mut map = self.by_name.write();
        if let Some(existing) = map.get(name) {
            Self::check_tenant(existing, tenant)?;
            return Self::check(existing, &config).map(|()| (existing.clone(), false));
        }
        let id = map.values().map(|n| n.id).max().map_or(1, |m| m + 1);
        let tenant = tenant.unwrap_or("").to_string();
        if let Some(disk) = disk {
            // The owner first: a crash between the two writes leaves an
            // orphan owner record, never an unowned namespace of a tenant.
            if !tenant.is_empty() {
                let mut key = TENANT_PREFIX.to_vec();
                key.extend_from_slice(name.as_bytes());
                disk.put_setting(&key, tenant.as_bytes())?;
            }
            let mut value = id.to_le_bytes().to_vec();
            config
                .encode(&mut value)
                .map_err(|e| NamespaceError::Invalid(format!("cannot encode config: {e}")))?;
            let mut key = SETTINGS_PREFIX.to_vec();
            key.extend_from_slice(name.as_bytes());
            disk.put_setting(&key, &value)?;
        }
        let ns = Namespace {
            id,
            name: name.to_string(),
            effective_seed: effective_seed(config.seed, &tenant_salt(&tenant, &config.salt)),
            config,
            tenant,
        };
        map.insert(name.to_string(), ns.clone());
        Ok((ns, true))
    }

    /// Checks a handshake's name and configuration on their own (not
    /// against an existing namespace) and returns the configuration
    /// normalised (seed 0 means the default seed).
    pub fn validate_request(
        &self,
        name: &str,
        config: Option<HashingConfig>,
    ) -> Result<HashingConfig, NamespaceError> {
        validate_name(name)?;
        let config = normalise(config.ok_or_else(|| {
            NamespaceError::Invalid("handshake without a hashing config: set `config`".into())
        })?);
        if config.block_tokens == 0 {
            return Err(NamespaceError::Invalid(
                "config.block_tokens must be > 0 (e.g. 16 for vLLM)".into(),
            ));
        }
        if config.block_bytes == 0 || config.block_bytes > self.max_block_bytes {
            return Err(NamespaceError::Invalid(format!(
                "config.block_bytes must be between 1 and {} (this server's --max-block-bytes), got {}",
                self.max_block_bytes, config.block_bytes
            )));
        }
        Ok(config)
    }

    /// [`NamespaceError::NotAllowed`] unless `name` may be created here.
    pub fn check_allowed(&self, name: &str) -> Result<(), NamespaceError> {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a == name) {
            return Err(NamespaceError::NotAllowed {
                name: name.to_string(),
                allowed: self.allowed.join(", "),
            });
        }
        Ok(())
    }

    fn check_tenant(existing: &Namespace, tenant: Option<&str>) -> Result<(), NamespaceError> {
        match tenant {
            Some(t) if !existing.tenant.is_empty() && existing.tenant != t => {
                Err(NamespaceError::Forbidden(forbidden_message(&existing.name)))
            }
            _ => Ok(()),
        }
    }

    fn check(existing: &Namespace, config: &HashingConfig) -> Result<(), NamespaceError> {
        Self::check_config(&existing.name, &existing.config, config)
    }

    /// [`NamespaceError::Mismatch`], naming the differing fields and both
    /// configurations, when `sent` differs from `current`, the configuration
    /// of namespace `name`.
    pub fn check_config(
        name: &str,
        current: &HashingConfig,
        sent: &HashingConfig,
    ) -> Result<(), NamespaceError> {
        let diff = differing_fields(current, sent);
        if diff.is_empty() {
            return Ok(());
        }
        let mut msg = String::new();
        let _ = write!(
            msg,
            "hashing config mismatch for namespace '{}' (differs in {}): the namespace uses [{}], \
             this client sent [{}]. Blocks hashed or laid out differently can never match; \
             fix the client's configuration or use another namespace.",
            name,
            diff.join(", "),
            describe(current),
            describe(sent)
        );
        Err(NamespaceError::Mismatch(msg))
    }

    /// A namespace by name.
    pub fn get(&self, name: &str) -> Option<Namespace> {
        self.by_name.read().get(name).cloned()
    }

    /// All namespaces, sorted by name.
    pub fn all(&self) -> Vec<Namespace> {
        let mut out: Vec<_> = self.by_name.read().values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(block_tokens: u32) -> HashingConfig {
        HashingConfig {
            block_tokens,
            seed: 0,
            salt: String::new(),
            block_bytes: 1024,
            kv_layout: "test".into(),
            model: "m".into(),
        }
    }

    #[test]
    fn first_handshake_creates_then_mismatch_is_refused() {
        let reg = NamespaceRegistry::new(vec![], 1 << 20);
        let (ns, created) = reg.handshake("a", Some(cfg(16)), None).expect("create");
        assert!(created);
        assert_eq!(ns.config.seed, DEFAULT_SEED);
        let (again, created) = reg.handshake("a", Some(cfg(16)), None).expect("same");
        assert!(!created);
        assert_eq!(again.id, ns.id);
        let err = reg
            .handshake("a", Some(cfg(64)), None)
            .expect_err("mismatch");
        let msg = err.to_string();
        assert!(
            msg.contains("block_tokens=16") && msg.contains("block_tokens=64"),
            "{msg}"
        );
        assert!(msg.contains("differs in block_tokens"), "{msg}");
    }

    #[test]
    fn invalid_requests_are_explained() {
        let reg = NamespaceRegistry::new(vec!["only".into()], 1 << 20);
        assert!(matches!(
            reg.handshake("", Some(cfg(16)), None),
            Err(NamespaceError::Invalid(_))
        ));
        assert!(matches!(
            reg.handshake("a b", Some(cfg(16)), None),
            Err(NamespaceError::Invalid(_))
        ));
        assert!(matches!(
            reg.handshake("only", Some(cfg(0)), None),
            Err(NamespaceError::Invalid(_))
        ));
        assert!(matches!(
            reg.handshake("only", None, None),
            Err(NamespaceError::Invalid(_))
        ));
        assert!(matches!(
            reg.handshake("other", Some(cfg(16)), None),
            Err(NamespaceError::NotAllowed { .. })
        ));
        let mut big = cfg(16);
        big.block_bytes = 2 << 20;
        assert!(matches!(
            reg.handshake("only", Some(big), None),
            Err(NamespaceError::Invalid(_))
        ));
    }

    #[test]
    fn tenants_are_bound_salted_and_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = {
            let disk = DiskTier::open(dir.path(), false).expect("open");
            let reg = NamespaceRegistry::new(vec![], 1 << 20);
            let (a, _) = reg
                .handshake_as("a/m", Some(cfg(16)), Some("a"), Some(&disk))
                .expect("a");
            let (b, _) = reg
                .handshake_as("b/m", Some(cfg(16)), Some("b"), Some(&disk))
                .expect("b");
            // Same config, different tenants: different seeds and ids.
            assert_ne!(a.effective_seed, b.effective_seed);
            assert_ne!(a.id, b.id);
            let (plain, _) = reg.handshake("p", Some(cfg(16)), None).expect("p");
            assert_eq!(plain.effective_seed, effective_seed(DEFAULT_SEED, ""));
            // Tenant b may not open a's namespace, even with a wrong config.
            assert!(matches!(
                reg.handshake_as("a/m", Some(cfg(64)), Some("b"), None),
                Err(NamespaceError::Forbidden(_))
            ));
            (a, b)
        };
        let disk = DiskTier::open(dir.path(), false).expect("reopen");
        let reg = NamespaceRegistry::new(vec![], 1 << 20);
        reg.load(&disk).expect("load");
        assert_eq!(reg.get("a/m").expect("a"), a);
        assert_eq!(reg.get("b/m").expect("b"), b);
        assert!(reg
            .handshake_as("b/m", Some(cfg(16)), Some("a"), None)
            .is_err());
    }

    #[test]
    fn record_decoder_refuses_garbage() {
        assert!(decode_record(&[1, 2]).is_none());
        let mut v = 7u32.to_le_bytes().to_vec();
        cfg(16).encode(&mut v).expect("encode");
        assert_eq!(decode_record(&v), Some((7, cfg(16))));
        v.push(0xff);
        assert!(decode_record(&v).is_none());
    }

    #[test]
    fn configs_persist_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let disk = DiskTier::open(dir.path(), false).expect("open");
            let reg = NamespaceRegistry::new(vec![], 1 << 20);
            reg.handshake("x", Some(cfg(16)), Some(&disk))
                .expect("create");
            reg.handshake("y", Some(cfg(64)), Some(&disk))
                .expect("create");
        }
        let disk = DiskTier::open(dir.path(), false).expect("reopen");
        let reg = NamespaceRegistry::new(vec![], 1 << 20);
        assert_eq!(reg.load(&disk).expect("load"), 2);
        assert!(reg.handshake("y", Some(cfg(16)), Some(&disk)).is_err());
        let (y, created) = reg
            .handshake("y", Some(cfg(64)), Some(&disk))
            .expect("same");
        assert!(!created);
        assert_ne!(y.id, reg.get("x").expect("x").id);
    }
}
