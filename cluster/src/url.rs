//! `--cluster etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`: where the cluster's
//! etcd is, and under which key prefix (default `/kvtier`) this cluster
//! keeps its records, so that several kvtier clusters can share one etcd.

use std::fmt;

use crate::ClusterError;

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "/kvtier";

/// A parsed `--cluster` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// etcd endpoints, `HOST:PORT` each (plain HTTP/2, as etcd serves by default).
    pub endpoints: Vec<String>,
    /// Key prefix, starting with `/`, without a trailing `/`.
    pub prefix: String,
}

const EXAMPLE: &str = "e.g. etcd://10.0.0.5:2379,10.0.0.6:2379 or etcd://127.0.0.1:2379/my-cluster";

impl ClusterUrl {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`. Hosts are names,
    /// IPv4 addresses or bracketed IPv6 addresses; the port is required.
    pub fn parse(text: &str) -> Result<Self, ClusterError> {
        let bad =
            |why: String| ClusterError::BadUrl(format!("--cluster {text:?}: {why} ({EXAMPLE})"));
        let t = text.trim();
        let Some(rest) = t.strip_prefix("etcd://") else {
            return Err(match t.split_once("://") {
                Some((scheme, _)) => {
                    bad(format!("scheme {scheme:?} is not supported, use etcd://"))
                }
                None => bad("must start with etcd://".into()),
            });
        };
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if hosts.is_empty() {
            return Err(bad("no etcd endpoint".into()));
        }
        let mut endpoints = Vec::new();
        for entry in hosts.split(',') {
            endpoints.push(parse_endpoint(entry).map_err(&bad)?);
        }
        let prefix = parse_prefix(prefix).map_err(bad)?;
        Ok(Self { endpoints, prefix })
    }

    /// `{prefix}/nodes/`: the membership records.
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// `{prefix}/nodes/{id}`.
    pub fn node_key(&self, id: &str) -> String {
        format!("{}/nodes/{id}", self.prefix)
    }

    /// `{prefix}/namespaces/{name}`: a namespace's hashing configuration.
    pub fn namespace_key(&self, name: &str) -> String {
        format!("{}/namespaces/{name}", self.prefix)
    }
}

impl fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}", self.endpoints.join(","))?;
        if self.prefix != DEFAULT_PREFIX {
            f.write_str(&self.prefix)?;
        }
        Ok(())
    }
}

fn parse_endpoint(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("an empty endpoint between commas".into());
    }
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("endpoint {entry:?}: '[' without ']'"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("endpoint {entry:?} has no :PORT"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "endpoint {entry:?}: {host:?} is not an IPv6 address"
            ));
        }
        (format!("[{host}]"), port)
    } else {
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("endpoint {entry:?} has no :PORT"))?;
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !host_ok {
            return Err(format!(
                "endpoint {entry:?}: {host:?} is not a host name or address"
            ));
        }
        (host.to_string(), port)
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
        _ => Err(format!(
            "endpoint {entry:?}: port {port:?} is not a number from 1 to 65535"
        )),
    }
}

fn parse_prefix(path: &str) -> Result<String, String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(DEFAULT_PREFIX.into());
    }
    let ok = trimmed[1..].split('/').all(|seg| {
        !seg.is_empty()
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    });
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "key prefix {path:?}: use /-separated segments of A-Z a-z 0-9 . _ -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_and_prefix() {
        let u = ClusterUrl::parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(u.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(u.prefix, "/kvtier");
        assert_eq!(u.node_key("a"), "/kvtier/nodes/a");
        assert_eq!(u.nodes_prefix(), "/kvtier/nodes/");
        assert_eq!(u.to_string(), "etcd://127.0.0.1:2379");
        let u = ClusterUrl::parse(" etcd://a.example:2379, b:2380,[::1]:2381/prod/kv/ ").unwrap();
        assert_eq!(u.endpoints, ["a.example:2379", "b:2380", "[::1]:2381"]);
        assert_eq!(u.prefix, "/prod/kv");
        assert_eq!(u.namespace_key("m"), "/prod/kv/namespaces/m");
        assert_eq!(
            u.to_string(),
            "etcd://a.example:2379,b:2380,[::1]:2381/prod/kv"
        );
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        for (text, says) in [
            ("127.0.0.1:2379", "must start with etcd://"),
            ("http://127.0.0.1:2379", "scheme \"http\" is not supported"),
            ("etcd://", "no etcd endpoint"),
            ("etcd:///x", "no etcd endpoint"),
            ("etcd://host", "has no :PORT"),
            ("etcd://host:", "is not a number"),
            ("etcd://host:0", "is not a number from 1 to 65535"),
            ("etcd://host:99999", "is not a number"),
            ("etcd://a:1,,b:2", "empty endpoint"),
            ("etcd://:2379", "is not a host name"),
            ("etcd://ho st:2379", "is not a host name"),
            ("etcd://[::1:2379", "without ']'"),
            ("etcd://[zz]:2379", "not an IPv6 address"),
            ("etcd://a:1/b//c", "key prefix"),
            ("etcd://a:1/b c", "key prefix"),
        ] {
            let err = ClusterUrl::parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.contains("e.g. etcd://"), "{text}: {err}");
        }
    }
}
