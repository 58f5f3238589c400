//! The log subscriber every binary installs first.
//!
//! Logs go to stderr (stdout carries only the ready line and a command's
//! result, which scripts parse). `KVTIER_LOG` is an `EnvFilter` directive
//! (`info`, `kvtier_cache_server=debug,warn`, ...); when it is unset or does
//! not parse, the binary's own default applies.
//!
//! Two formats, chosen by `--log-format` / `KVTIER_LOG_FORMAT`:
//! - `text` (default): human-readable lines. ANSI colours are written only
//!   when stderr is a terminal, so a log redirected to a file or collected by
//!   a container runtime holds no escape codes.
//! - `json`: one JSON object per line (`timestamp`, `level`, `fields`,
//!   `target`, spans), for log collectors.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// Environment variable holding the log filter directive.
pub const FILTER_ENV: &str = "KVTIER_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The logging flags, flattened into each binary's flags
/// (`#[command(flatten)] log: LogArgs`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr: `text` (colours only on a terminal) or
    /// `json` (one object per line, for log collectors). The filter is
    /// KVTIER_LOG (e.g. `info`, `kvtier_router=debug`).
    #[arg(
        long = "log-format",
        env = "KVTIER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// The format installed by [`init`], so the start-up error report can be
/// written in the same format.
static INSTALLED: OnceLock<LogFormat> = OnceLock::new();

/// Why no subscriber was installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber (is one installed already?)")]
pub struct InitError(#[source] Box<dyn std::error::Error + Send + Sync + 'static>);

/// Installs the process's subscriber: stderr, filtered by `KVTIER_LOG` or
/// else by `default_filter` (e.g. `"info"`), in the format `args` asks for.
pub fn init(args: &LogArgs, default_filter: &str) -> Result<(), InitError> {
    let filter =
        EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let colours = args.log_format == LogFormat::Text && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours);
    match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(InitError)?;
    let _ = INSTALLED.set(args.log_format);
    Ok(())
}

/// The format [`init`] installed, if it ran.
pub fn installed() -> Option<LogFormat> {
    INSTALLED.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn the_format_defaults_to_text_and_parses_both_names() {
        let parse = |argv: &[&str]| Flags::try_parse_from(argv).map(|f| f.log.log_format);
        // Unset in CI; if a developer's shell sets it, the default is theirs.
        if std::env::var_os("KVTIER_LOG_FORMAT").is_none() {
            assert_eq!(parse(&["bin"]).expect("default"), LogFormat::Text);
        }
        assert_eq!(
            parse(&["bin", "--log-format", "json"]).expect("json"),
            LogFormat::Json
        );
        assert_eq!(
            parse(&["bin", "--log-format=text"]).expect("text"),
            LogFormat::Text
        );
    }

    /// With subcommands (kvtier-sim-engine), the flag may follow one.
    #[derive(Debug, Parser)]
    struct WithCommand {
        #[command(flatten)]
        log: LogArgs,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Run,
    }

    #[test]
    fn the_flag_is_valid_clap_and_global_to_subcommands() {
        use clap::CommandFactory;
        Flags::command().debug_assert();
        WithCommand::command().debug_assert();
        let parsed = WithCommand::try_parse_from(["bin", "run", "--log-format", "json"])
            .expect("after the subcommand");
        assert!(matches!(parsed.command, Sub::Run));
        assert_eq!(parsed.log.log_format, LogFormat::Json);
    }

    #[test]
    fn an_unknown_format_is_refused_with_the_choices() {
        let error = Flags::try_parse_from(["bin", "--log-format", "xml"]).expect_err("refused");
        let text = error.to_string();
        assert!(text.contains("text") && text.contains("json"), "{text}");
    }
}
