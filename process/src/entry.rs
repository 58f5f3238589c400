//! A binary's whole `main`, written once: parse the flags, install logging,
//! run the service on a multi-threaded tokio runtime, and say a failed start's
//! reason once with a failing exit status.
//!
//! ```no_run
//! use std::process::ExitCode;
//! use clap::Parser;
//! use kvtier_process::LogArgs;
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     log: LogArgs,
//! }
//!
//! fn main() -> ExitCode {
//!     kvtier_process::main("info", |args: &Args| &args.log, |args: Args| async move {
//!         // build the library's service from `args`, run it until shutdown
//!         # let _ = args;
//!         Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//!     })
//! }
//! ```

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;

use crate::logging::{self, LogArgs};
use crate::report;

/// Parses `A` from the command line (clap prints help, versions and usage
/// errors itself), installs the log subscriber with `default_filter` unless
/// `KVTIER_LOG` says otherwise (`log` finds the flattened [`LogArgs`] in
/// `A`), runs `body(args)` to completion on a multi-threaded runtime, and
/// turns its result into the exit status ([`report::exit_code`]).
pub fn main<A, F, Fut, E>(default_filter: &str, log: fn(&A) -> &LogArgs, body: F) -> ExitCode
where
    A: clap::Parser,
    F: FnOnce(A) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: AsRef<dyn Error + Send + Sync + 'static> + From<logging::InitError> + From<std::io::Error>,
{
    let args = A::parse();
    report::exit_code(start(args, default_filter, log, body))
}

fn start<A, F, Fut, E>(
    args: A,
    default_filter: &str,
    log: fn(&A) -> &LogArgs,
    body: F,
) -> Result<(), E>
where
    F: FnOnce(A) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<logging::InitError> + From<std::io::Error>,
{
    logging::init(log(&args), default_filter)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(body(args))
}
