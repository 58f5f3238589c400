//! The crate's one error type: callers are tests and benchmarks that print
//! it, except where a test inspects why a process did not come up
//! ([`Error::NotReady`]: its exit code and log).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What a harness call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed; `what` says which.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A workspace binary is not where it should be.
    #[error("{} not found: build it first with `cargo build --release --workspace --bins`{}", path.display(), hint.as_deref().map(|h| format!(" (or {h})")).unwrap_or_default())]
    BinaryNotFound { path: PathBuf, hint: Option<String> },
    /// A child did not print its ready line. `log` is its whole stderr log
    /// (empty when stderr was not captured); the message shows its tail.
    #[error("{name} did not become ready ({reason}){}", log_tail(log_path, log))]
    NotReady {
        name: String,
        reason: NotReady,
        log_path: Option<PathBuf>,
        log: String,
    },
    /// A ready line lacks a field, or its value does not parse.
    #[error("{problem} {key}= in {line:?}")]
    Field {
        key: String,
        line: String,
        problem: &'static str,
    },
    /// The process was already stopped (killed or terminated).
    #[error("{0} already stopped")]
    Stopped(String),
    /// It did not exit within the grace period after SIGTERM (it was killed).
    #[error("{name} did not exit within {} s of SIGTERM", within.as_secs_f64())]
    StopTimeout { name: String, within: Duration },
    /// An HTTP answer that was not `200`, or not HTTP at all.
    #[error("GET {path}: {head}")]
    Http { path: String, head: String },
}

/// Why a child did not become ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// It exited (closed its stdout) first; the exit code, `None` on a signal.
    Exited(Option<i32>),
    /// No ready line within this long (the child was killed).
    Timeout(Duration),
    /// Its first line was something else (the child was killed).
    Printed(String),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Exited(Some(code)) => write!(f, "exited with code {code}"),
            NotReady::Exited(None) => write!(f, "killed by a signal"),
            NotReady::Timeout(d) => write!(f, "no ready line within {} s", d.as_secs_f64()),
            NotReady::Printed(line) => write!(f, "printed {line:?}"),
        }
    }
}

/// Lines of a log shown in an error; the whole log stays in the error value.
const TAIL_LINES: usize = 200;

fn log_tail(path: &Option<PathBuf>, log: &str) -> String {
    let Some(path) = path else {
        return String::new();
    };
    let lines: Vec<&str> = log.lines().collect();
    let skipped = lines.len().saturating_sub(TAIL_LINES);
    let mut out = format!("; log {}:\n", path.display());
    if skipped > 0 {
        out.push_str(&format!("[... {skipped} earlier lines]\n"));
    }
    out.push_str(&lines[skipped..].join("\n"));
    out
}

impl Error {
    /// An [`Error::Io`] with context.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
