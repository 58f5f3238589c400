//! A ready line and its `key=value` fields.
//!
//! kvtier's binaries announce they serve with one stdout line,
//! `<binary> ready grpc=127.0.0.1:40123 metrics=off ...`: the addresses they
//! bound (port 0 lets the OS choose) are only known from it.

use std::collections::HashMap;
use std::str::FromStr;

use crate::Error;

/// One line of `word key=value ...` (no trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine(String);

impl ReadyLine {
    /// Wraps `line`, dropping a trailing newline.
    pub fn new(line: impl Into<String>) -> Self {
        let mut line = line.into();
        while line.ends_with(['\n', '\r']) {
            line.pop();
        }
        Self(line)
    }

    /// The line as printed.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// The value of `key=`, if the line has it (the first one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.split_whitespace().find_map(|kv| {
            kv.split_once('=')
                .and_then(|(k, v)| (k == key).then_some(v))
        })
    }

    /// The value of `key=`, unless it is missing or `off`.
    pub fn get_on(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| *v != "off")
    }

    /// The value of `key=` parsed as `T` (an address, a count...).
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<T, Error> {
        let value = self.get(key).ok_or_else(|| self.field_error(key, "no"))?;
        value
            .parse()
            .map_err(|_| self.field_error(key, "bad value of"))
    }

    /// Every `key=value` field (words without `=` are left out).
    pub fn fields(&self) -> HashMap<String, String> {
        self.0
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn field_error(&self, key: &str, problem: &'static str) -> Error {
        Error::Field {
            key: key.to_string(),
            line: self.0.clone(),
            problem,
        }
    }
}

impl std::fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn fields_and_addresses() {
        let line =
            ReadyLine::new("kvtier-server ready grpc=127.0.0.1:5 metrics=off data=127.0.0.1:6\n");
        assert_eq!(
            line.text(),
            "kvtier-server ready grpc=127.0.0.1:5 metrics=off data=127.0.0.1:6"
        );
        let grpc: SocketAddr = line.parse("grpc").unwrap();
        assert_eq!(grpc.port(), 5);
        assert_eq!(line.get("metrics"), Some("off"));
        assert_eq!(line.get_on("metrics"), None);
        assert_eq!(line.get_on("data"), Some("127.0.0.1:6"));
        assert_eq!(line.get("grp"), None, "keys match whole");
        assert_eq!(line.fields().len(), 3);
    }

    #[test]
    fn missing_and_bad_fields_name_the_key() {
        let line = ReadyLine::new("x ready http=nope");
        let missing = line.parse::<SocketAddr>("grpc").unwrap_err().to_string();
        assert!(missing.contains("no grpc="), "{missing}");
        let bad = line.parse::<SocketAddr>("http").unwrap_err().to_string();
        assert!(bad.contains("bad value of http="), "{bad}");
    }
}
