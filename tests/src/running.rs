//! What every kvtier binary started by the tests shares: a
//! [`kvtier_testkit::Process`] (stderr appended to a log file,
//! `KVTIER_LOG=info`, SIGKILL on drop) and the methods over it.
//!
//! Each handle (`ServerProcess`, `AgentProcess`, ...) is a plain struct with
//! its addresses as public fields and a private `process` field;
//! [`process_handle!`] gives it `log`, `pid`, `kill9` and `terminate`. Plain
//! fields, not `Deref`: a test's `async move` closure then captures only the
//! `Copy` address it uses, not the whole handle.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use kvtier_testkit::{binary, Launch, Process};

/// How long a clean exit may take after SIGTERM.
pub const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Starts workspace binary `name` (or `$env_override`) with `args`, stderr
/// appended to `log`, and waits for its `"<name> ready"` line.
pub(crate) fn start(
    name: &str,
    env_override: &str,
    args: &[String],
    log: &Path,
) -> Result<Process> {
    Ok(Launch::new(binary(name, env_override)?)
        .name(name)
        .args(args)
        .env("KVTIER_LOG", "info")
        .log_append(log)
        .spawn()?)
}

/// `args` followed by `extra` as owned strings.
pub(crate) fn with_extra(args: &[&str], extra: &[&str]) -> Vec<String> {
    args.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// `log`, `pid`, `kill9` and `terminate` for a handle with a
/// `process: kvtier_testkit::Process` field.
macro_rules! process_handle {
    ($handle:ty) => {
        impl $handle {
            /// Its stderr log so far.
            pub fn log(&self) -> String {
                self.process.log()
            }

            /// Process id.
            pub fn pid(&self) -> u32 {
                self.process.pid()
            }

            /// `kill -9`, then wait for the process to be gone.
            pub fn kill9(&mut self) -> anyhow::Result<()> {
                Ok(self.process.kill()?)
            }

            /// SIGTERM, then wait up to 30 s for a clean exit; returns the exit code.
            pub fn terminate(&mut self) -> anyhow::Result<i32> {
                Ok(self.process.terminate($crate::running::STOP_WITHIN)?)
            }
        }
    };
}
pub(crate) use process_handle;
