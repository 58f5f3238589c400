//! The shutdown signal: SIGTERM (what Kubernetes and systemd send) or SIGINT
//! (Ctrl-C).
//!
//! The handlers are installed by [`signals`] itself, not when its future is
//! first polled: a binary calls it before printing its ready line, so a signal
//! sent right after the ready line is never lost to the default action (which
//! would kill the process with status 143 instead of a clean exit 0 after
//! draining). Must be called inside a Tokio runtime.

use std::future::Future;

/// A signal handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the {signal} handler")]
pub struct SignalError {
    signal: &'static str,
    #[source]
    source: std::io::Error,
}

/// Installs the SIGTERM and SIGINT handlers now and returns the future that
/// completes on the first of them (logged at info).
#[cfg(unix)]
pub fn signals() -> Result<impl Future<Output = ()> + Send + 'static, SignalError> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| SignalError {
            signal: name,
            source,
        })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal, "shutdown signal received");
    })
}

/// Elsewhere only Ctrl-C exists; it is installed when first polled.
#[cfg(not(unix))]
pub fn signals() -> Result<impl Future<Output = ()> + Send + 'static, SignalError> {
    Ok(async {
        if let Err(source) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %source, "cannot wait for Ctrl-C; shutting down");
            return;
        }
        tracing::info!("shutdown signal received");
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One test: signals reach every listener of the process, so a second
    /// test sending SIGTERM in parallel would resolve this one's future early.
    #[tokio::test]
    async fn the_future_waits_for_sigterm_which_no_longer_kills_the_process() {
        let mut shutdown = Box::pin(signals().expect("handlers"));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut shutdown)
                .await
                .is_err(),
            "resolved without a signal"
        );
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("resolved by SIGTERM");
    }
}
