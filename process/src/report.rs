//! The error a binary exits with, said once.
//!
//! Returning `anyhow::Result` from `main` prints the error's `Debug` form:
//! `Error: <context>` and then every cause under `Caused by:`. kvtier's
//! errors often carry their cause twice, in their own text *and* as their
//! `source()` (a `thiserror` variant `#[error("...: {0}")] X(#[from] E)`, or a
//! `with_context(|| format!("...: {e}"))`), so a refused start printed the
//! same sentence twice. Here the chain is joined into one line, outermost
//! context first, `: ` between the parts, and a cause whose text is already
//! in the line is left out.
//!
//! `main` returns [`exit_code`] of the real entry point's result:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     kvtier_process::report::exit_code(run())
//! }
//! # fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> { Ok(()) }
//! ```

use std::error::Error;
use std::process::ExitCode;

use crate::logging::{self, LogFormat};

/// The error and its causes as one line, outermost first, with no part
/// repeated.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        let text = text.trim();
        if !text.is_empty() && !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        next = error.source();
    }
    if line.is_empty() {
        line.push_str("unknown error (it has no message)");
    }
    line
}

/// `ExitCode::SUCCESS` for `Ok`; for `Err`, prints the reason once on stderr
/// (`Error: <reason>`, or one JSON log event under `--log-format json`) and
/// returns `ExitCode::FAILURE`.
pub fn exit_code<E>(result: Result<(), E>) -> ExitCode
where
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    let reason = describe(error.as_ref());
    // A JSON log stays all JSON, unless the filter would drop the event:
    // the reason must always reach stderr.
    if logging::installed() == Some(LogFormat::Json) && tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(error = %reason, "exiting on error");
    } else {
        eprintln!("Error: {reason}");
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// A `thiserror`-style error that shows its source in its text and also
    /// returns it from `source()` (what doubled the reasons).
    #[derive(Debug)]
    struct Embeds(std::io::Error);

    impl std::fmt::Display for Embeds {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot open the store: {}", self.0)
        }
    }

    impl Error for Embeds {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn io(text: &str) -> std::io::Error {
        std::io::Error::other(text.to_string())
    }

    #[test]
    fn causes_follow_their_context_outermost_first() {
        let error = Err::<(), _>(io("permission denied"))
            .context("open /data/LOCK")
            .context("start the disk tier")
            .expect_err("an error");
        assert_eq!(
            describe(error.as_ref()),
            "start the disk tier: open /data/LOCK: permission denied"
        );
    }

    #[test]
    fn a_cause_the_context_already_says_is_not_repeated() {
        let error = anyhow::Error::new(Embeds(io("lock held by another process")));
        assert_eq!(
            describe(error.as_ref()),
            "cannot open the store: lock held by another process"
        );
        // A context formatted with the cause in it, keeping it as the source.
        let error = Err::<(), _>(io("address in use"))
            .map_err(|e| {
                let context = format!("cannot bind 0.0.0.0:1: {e}");
                anyhow::Error::new(e).context(context)
            })
            .context("start the server")
            .expect_err("an error");
        assert_eq!(
            describe(error.as_ref()),
            "start the server: cannot bind 0.0.0.0:1: address in use"
        );
    }

    /// What `fn main() -> anyhow::Result<()>` printed for such an error, and
    /// what is printed now.
    #[test]
    fn the_debug_form_said_it_twice_and_the_report_says_it_once() {
        let error = anyhow::Error::new(Embeds(io("lock held")));
        let debug = format!("{error:?}");
        assert_eq!(debug.matches("lock held").count(), 2, "{debug}");
        assert_eq!(describe(error.as_ref()).matches("lock held").count(), 1);
    }

    #[test]
    fn a_plain_message_is_said_once() {
        let error = anyhow::anyhow!("refusing to serve gRPC in plaintext on 0.0.0.0:1");
        assert_eq!(
            describe(error.as_ref()),
            "refusing to serve gRPC in plaintext on 0.0.0.0:1"
        );
    }

    #[test]
    fn the_exit_status_says_whether_the_run_failed() {
        assert_eq!(exit_code(Ok::<(), anyhow::Error>(())), ExitCode::SUCCESS);
        assert_eq!(
            exit_code(Err::<(), _>(anyhow::anyhow!("refused"))),
            ExitCode::FAILURE
        );
    }
}
