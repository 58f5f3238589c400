//! The set-up every binary shares (kvtier-process), seen from outside on the
//! real `kvtier-server`: what its stderr holds when redirected to a file, and
//! what a refused start prints.
//!
//! Run after `cargo build --release --workspace --bins`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use kvtier_integration_tests::binary;

/// Starts `kvtier-server` on free loopback ports with stderr written to
/// `log`, plus `extra` flags. The environment is pinned so that the caller's
/// shell (`NO_COLOR`, `KVTIER_LOG_FORMAT`, ...) cannot change the outcome.
fn server(data_dir: &Path, log: &Path, extra: &[&str]) -> Result<Child> {
    let stderr = std::fs::File::create(log)?;
    Command::new(binary("kvtier-server", "KVTIER_SERVER_BIN")?)
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("KVTIER_LOG", "info")
        .env_remove("KVTIER_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env_remove("KVTIER_ALLOW_PLAINTEXT")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .context("spawn kvtier-server")
}

/// The first stdout line, or an error after 60 s.
fn ready_line(child: &mut Child) -> Result<String> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
    });
    Ok(rx.recv_timeout(Duration::from_secs(60))??)
}

/// Waits up to 30 s for the process to exit.
fn wait(child: &mut Child) -> Result<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    bail!("still running 30 s later")
}

/// Starts the server, waits for its ready line, stops it with SIGTERM
/// (which must end it with status 0) and returns its stderr.
fn run_and_stop(extra: &[&str]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("stderr.log");
    let mut child = server(&dir.path().join("data"), &log, extra)?;
    let line = ready_line(&mut child)?;
    if !line.starts_with("kvtier-server ready") {
        let _ = child.kill();
        bail!(
            "not ready ({line:?}); stderr:\n{}",
            std::fs::read_to_string(&log)?
        );
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(killed.success(), "kill -TERM failed");
    let status = wait(&mut child)?;
    let stderr = std::fs::read_to_string(&log)?;
    assert!(
        status.success(),
        "exit {status:?} on SIGTERM; stderr:\n{stderr}"
    );
    Ok(stderr)
}

#[test]
fn json_logs_are_one_object_per_line() -> Result<()> {
    let stderr = run_and_stop(&["--listen", "127.0.0.1:0", "--log-format", "json"])?;
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines at all");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("not JSON: {line:?}\nstderr:\n{stderr}"))?;
        assert!(value.is_object(), "not an object: {line}");
        assert!(value["level"].is_string(), "no level: {line}");
        assert!(value["fields"].is_object(), "no fields: {line}");
    }
    assert!(
        stderr.contains("shutdown signal received"),
        "the SIGTERM was not logged:\n{stderr}"
    );
    Ok(())
}

#[test]
fn text_logs_in_a_file_hold_no_escape_codes() -> Result<()> {
    let stderr = run_and_stop(&["--listen", "127.0.0.1:0"])?;
    assert!(stderr.contains("INFO"), "no info lines:\n{stderr}");
    assert!(
        !stderr.as_bytes().contains(&0x1b),
        "ANSI escape codes in a redirected log:\n{stderr:?}"
    );
    Ok(())
}

#[test]
fn a_refused_start_says_why_once_and_fails() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("stderr.log");
    // Plaintext gRPC on a non-loopback address without --allow-plaintext.
    let mut child = server(
        &dir.path().join("data"),
        &log,
        &["--listen", "0.0.0.0:0", "--data-listen", "off"],
    )?;
    let line = ready_line(&mut child)?;
    let status = wait(&mut child)?;
    let stderr = std::fs::read_to_string(&log)?;
    assert!(line.is_empty(), "it reported ready: {line:?}");
    assert!(!status.success(), "exit {status:?}; stderr:\n{stderr}");
    let reason = "refusing to serve gRPC in plaintext";
    assert_eq!(
        stderr.matches(reason).count(),
        1,
        "the reason is not said exactly once:\n{stderr}"
    );
    assert!(stderr.contains("--allow-plaintext"), "{stderr}");
    Ok(())
}
