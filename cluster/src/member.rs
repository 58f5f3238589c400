//! A cache server as the cluster knows it: the record each server keeps
//! under its own lease at `{prefix}/nodes/{id}` (JSON, readable with
//! `etcdctl get --prefix /kvtier/nodes/`).

use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// Longest node id accepted.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Whether a member takes new blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Owns its share of the hash space: reads and writes.
    #[default]
    Active,
    /// Leaving: no new writes, reads until it is gone.
    Draining,
}

impl MemberState {
    /// `active` or `draining`, as in the JSON record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
        }
    }
}

/// One cache server's membership record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Stable node id (persisted beside the server's data, so a restarted
    /// node takes its shard back). See [`validate_node_id`].
    pub id: String,
    /// gRPC address clients dial (`HOST:PORT`).
    pub grpc: String,
    /// Binary data-plane address (`HOST:PORT`), when the server serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Relative share of the hash space (1.0 for equal servers); must be
    /// finite and > 0.
    pub weight: f64,
    /// Registration epoch: grows each time this node registers again (a
    /// restart, or a lease lost and renewed), so a client can tell a node
    /// that came back from one that never left.
    pub epoch: u64,
    /// Active or draining.
    #[serde(default)]
    pub state: MemberState,
}

impl Member {
    /// The JSON record stored in etcd.
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serializes; NaN weights are
        // refused by `validate` before a record is ever written.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and validates a record read from etcd.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ClusterError> {
        let member: Self = serde_json::from_slice(bytes).map_err(|e| {
            ClusterError::BadRecord(format!(
                "{e} in {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        member.validate()?;
        Ok(member)
    }

    /// Checks the id and the weight.
    pub fn validate(&self) -> Result<(), ClusterError> {
        validate_node_id(&self.id)?;
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Err(ClusterError::BadRecord(format!(
                "node {}: weight must be a finite number > 0, got {}",
                self.id, self.weight
            )));
        }
        Ok(())
    }

    /// Whether it takes writes.
    pub fn is_active(&self) -> bool {
        self.state == MemberState::Active
    }
}

/// A node id is 1 to 64 characters of `A-Z a-z 0-9 . _ -` (it is part of an
/// etcd key and of file names, and people type it).
pub fn validate_node_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok && id != "." && id != ".." {
        Ok(())
    } else {
        Err(ClusterError::BadNodeId(format!(
            "node id {id:?} is not valid: use 1 to {MAX_NODE_ID_LEN} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Member {
        Member {
            id: "cache-0".into(),
            grpc: "10.0.0.1:50051".into(),
            data: Some("10.0.0.1:50052".into()),
            weight: 1.0,
            epoch: 7,
            state: MemberState::Active,
        }
    }

    #[test]
    fn json_round_trip_and_field_names() {
        let m = member();
        let json = m.to_json();
        assert!(json.contains(r#""state":"active""#), "{json}");
        assert!(json.contains(r#""grpc":"10.0.0.1:50051""#), "{json}");
        assert_eq!(Member::from_json(json.as_bytes()).unwrap(), m);
        let draining = Member {
            state: MemberState::Draining,
            data: None,
            ..member()
        };
        let json = draining.to_json();
        assert!(json.contains(r#""state":"draining""#), "{json}");
        assert!(!json.contains("data"), "{json}");
        assert_eq!(Member::from_json(json.as_bytes()).unwrap(), draining);
    }

    #[test]
    fn bad_records_are_refused() {
        assert!(Member::from_json(b"not json").is_err());
        assert!(Member::from_json(br#"{"id":"a"}"#).is_err());
        let zero = Member {
            weight: 0.0,
            ..member()
        };
        assert!(Member::from_json(zero.to_json().as_bytes()).is_err());
        let bad_id = Member {
            id: "a/b".into(),
            ..member()
        };
        assert!(Member::from_json(bad_id.to_json().as_bytes()).is_err());
        let bad_state = br#"{"id":"a","grpc":"x:1","weight":1,"epoch":1,"state":"gone"}"#;
        assert!(Member::from_json(bad_state).is_err());
    }

    #[test]
    fn node_ids() {
        for ok in ["a", "cache-0", "node_1.eu", &"x".repeat(64)] {
            assert!(validate_node_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "..", ".", &"x".repeat(65), "ü"] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
        }
    }
}
