//! The ready line: one machine-readable line on stdout once a binary serves.
//!
//! Scripts and the integration tests wait for it and read the bound
//! addresses from it (port 0 picks a free port), so its form is a contract:
//! `<binary> ready key=value key=value ...`. Logs never go to stdout, and the
//! line is flushed at once, because stdout is block-buffered when it is a
//! pipe and a waiting reader would otherwise see nothing.

use std::fmt::Display;
use std::io::Write;

/// Prints `line` and a newline on stdout and flushes. A closed stdout (the
/// reader went away) is logged, not fatal: the service keeps serving.
pub fn announce(line: impl Display) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!(%error, "cannot write the ready line on stdout");
    }
}

/// A ready-line value that may be absent: the value, or `off`.
pub fn or_off<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "off".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_value_reads_off() {
        assert_eq!(or_off(Some("127.0.0.1:9464")), "127.0.0.1:9464");
        assert_eq!(or_off(None::<u16>), "off");
    }
}
