//! Bearer tokens, hashed at rest, and the namespace grants they carry.
//!
//! A token file holds one client per line; only SHA-256 digests of tokens are
//! stored, never the tokens themselves:
//!
//! ```text
//! # <principal> sha256:<64 hex digits> [tenant=<tenant>] [admin] <grant>...
//! # grant: <namespace pattern>=<r|w|rw>; a pattern is a namespace name, or a
//! # prefix ending in '*' (e.g. acme/* matches acme/llama-8b).
//! router-acme  sha256:9f86d081884c7d65...  tenant=acme  acme/*=r
//! worker-acme  sha256:60303ae22b998861...  tenant=acme  acme/*=rw
//! ```
//!
//! The tenant defaults to the principal's name. Lookups hash the presented
//! token and compare it with every stored digest in constant time, so neither
//! the position of a match nor a near miss shows in the time taken.

use std::collections::HashSet;
use std::sync::Arc;

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use crate::SecurityError;

/// What a principal may do in a namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    /// Get, Lookup, agent hints, events.
    pub read: bool,
    /// Put (and creating the namespace at its first handshake).
    pub write: bool,
}

impl Access {
    /// Neither read nor write.
    pub const NONE: Access = Access {
        read: false,
        write: false,
    };

    /// Read or write.
    pub fn any(self) -> bool {
        self.read || self.write
    }

    fn union(self, other: Access) -> Access {
        Access {
            read: self.read || other.read,
            write: self.write || other.write,
        }
    }
}

/// One `pattern=access` entry of a token line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Exact name, or a prefix when `prefix` is true (the `*` stripped).
    pattern: String,
    prefix: bool,
    access: Access,
}

impl Grant {
    /// Parses `acme/*=rw`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (pattern, access) = text
            .split_once('=')
            .ok_or_else(|| format!("grant {text:?} is not <namespace-pattern>=<r|w|rw>"))?;
        let access = match access {
            "r" => Access {
                read: true,
                write: false,
            },
            "w" => Access {
                read: false,
                write: true,
            },
            "rw" | "wr" => Access {
                read: true,
                write: true,
            },
            other => {
                return Err(format!(
                    "grant {text:?}: access {other:?} is not r, w or rw"
                ))
            }
        };
        let (pattern, prefix) = match pattern.strip_suffix('*') {
            Some(p) => (p, true),
            None => (pattern, false),
        };
        if pattern.contains('*') {
            return Err(format!(
                "grant {text:?}: '*' is only allowed at the end of a pattern"
            ));
        }
        if pattern.is_empty() && !prefix {
            return Err(format!("grant {text:?}: empty namespace pattern"));
        }
        Ok(Self {
            pattern: pattern.to_string(),
            prefix,
            access,
        })
    }

    fn matches(&self, namespace: &str) -> bool {
        if self.prefix {
            namespace.starts_with(&self.pattern)
        } else {
            namespace == self.pattern
        }
    }
}

/// An authenticated client, as named in the token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Unique name (logs, metrics, rate-limit key).
    pub name: String,
    /// Tenant: namespaces a tenant creates are bound to it and salted with it.
    pub tenant: String,
    /// Sees server-wide information (all namespaces in Stats and WatchEvents).
    pub admin: bool,
    grants: Vec<Grant>,
}

impl Principal {
    /// A principal from its parts (for tests and programmatic configuration).
    pub fn new(name: &str, tenant: &str, admin: bool, grants: Vec<Grant>) -> Self {
        Self {
            name: name.into(),
            tenant: tenant.into(),
            admin,
            grants,
        }
    }

    /// What this principal may do in `namespace` (the union of matching grants).
    pub fn access(&self, namespace: &str) -> Access {
        self.grants
            .iter()
            .filter(|g| g.matches(namespace))
            .fold(Access::NONE, |a, g| a.union(g.access))
    }
}

/// SHA-256 of a token: what the token file stores.
pub fn hash_token(token: &str) -> [u8; 32] {
    let d = digest(&SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `sha256:<hex>` form of [`hash_token`], as written in token files.
pub fn token_digest_line(token: &str) -> String {
    format!("sha256:{}", hex(&hash_token(token)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// All known token digests and their principals.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: Vec<([u8; 32], Arc<Principal>)>,
}

impl TokenTable {
    /// Parses a token file's text (see the module docs). `;` also separates
    /// entries, so that a whole table fits in one environment variable.
    pub fn parse(text: &str) -> Result<Self, SecurityError> {
        let mut entries = Vec::new();
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        for (n, raw) in text.split(['\n', ';']).enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| SecurityError::TokenFile {
                entry: n + 1,
                reason,
            };
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default();
            let digest_text = words
                .next()
                .ok_or_else(|| bad(format!("{name:?} has no sha256:<hex> token digest")))?;
            let digest = digest_text
                .strip_prefix("sha256:")
                .and_then(unhex)
                .ok_or_else(|| {
                    bad(format!(
                        "{name:?}: expected sha256:<64 hex digits>, got {} characters; tokens \
                         are stored hashed: `kvtier-token hash` prints the line",
                        digest_text.len()
                    ))
                })?;
            let mut tenant = name.to_string();
            let mut admin = false;
            let mut grants = Vec::new();
            for word in words {
                if let Some(t) = word.strip_prefix("tenant=") {
                    if t.is_empty() {
                        return Err(bad(format!("{name:?}: empty tenant")));
                    }
                    tenant = t.to_string();
                } else if word == "admin" {
                    admin = true;
                } else {
                    grants.push(Grant::parse(word).map_err(bad)?);
                }
            }
            if !names.insert(name.to_string()) {
                return Err(bad(format!("principal {name:?} appears twice")));
            }
            if !digests.insert(digest) {
                return Err(bad(format!(
                    "{name:?} has the same token as an earlier principal"
                )));
            }
            entries.push((
                digest,
                Arc::new(Principal {
                    name: name.to_string(),
                    tenant,
                    admin,
                    grants,
                }),
            ));
        }
        Ok(Self { entries })
    }

    /// Number of principals.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal holding `token`. Every stored digest is compared, in
    /// constant time, whatever matches.
    pub fn find(&self, token: &str) -> Option<Arc<Principal>> {
        let presented = hash_token(token);
        let mut found: Option<&Arc<Principal>> = None;
        for (digest, principal) in &self.entries {
            let equal: bool = digest.ct_eq(&presented).into();
            // Branch-free enough: digests are unique, at most one matches,
            // and every entry is compared either way.
            found = if equal { Some(principal) } else { found };
        }
        found.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds() {
        let text = format!(
            "# comment\nrouter {} tenant=acme acme/*=r\n\nworker {} tenant=acme acme/*=rw other=w # tail\nops {} admin",
            token_digest_line("t-router"),
            token_digest_line("t-worker"),
            token_digest_line("t-ops"),
        );
        let table = TokenTable::parse(&text).expect("parse");
        assert_eq!(table.len(), 3);
        let router = table.find("t-router").expect("router");
        assert_eq!(router.tenant, "acme");
        assert_eq!(
            router.access("acme/llama"),
            Access {
                read: true,
                write: false
            }
        );
        assert_eq!(router.access("beta/llama"), Access::NONE);
        let worker = table.find("t-worker").expect("worker");
        assert!(worker.access("other").write && !worker.access("other").read);
        assert!(!worker.access("other2").any());
        let ops = table.find("t-ops").expect("ops");
        assert!(ops.admin);
        assert_eq!(ops.tenant, "ops");
        assert!(table.find("t-nobody").is_none());
        assert!(table.find("").is_none());
    }

    #[test]
    fn env_form_with_semicolons() {
        let text = format!(
            "a {} a/*=rw; b {} b=r",
            token_digest_line("x"),
            token_digest_line("y")
        );
        let table = TokenTable::parse(&text).expect("parse");
        assert_eq!(table.len(), 2);
        assert!(table.find("y").expect("b").access("b").read);
    }

    #[test]
    fn refuses_plain_tokens_duplicates_and_bad_grants() {
        assert!(TokenTable::parse("a secret-token a=rw").is_err());
        assert!(TokenTable::parse("a").is_err());
        let d = token_digest_line("x");
        assert!(TokenTable::parse(&format!("a {d}\na {}", token_digest_line("y"))).is_err());
        assert!(TokenTable::parse(&format!("a {d}\nb {d}")).is_err());
        assert!(TokenTable::parse(&format!("a {d} ns=x")).is_err());
        assert!(TokenTable::parse(&format!("a {d} a*b=r")).is_err());
        assert!(TokenTable::parse(&format!("a {d} =r")).is_err());
        assert!(TokenTable::parse(&format!("a {d} tenant=")).is_err());
        // "*=r" grants every namespace.
        let t = TokenTable::parse(&format!("a {d} *=r")).expect("star");
        assert!(t.find("x").expect("a").access("anything").read);
    }
}
