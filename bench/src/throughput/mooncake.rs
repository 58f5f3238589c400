//! Mooncake Store baseline: `bench/scripts/mooncake_peer.py` run with the
//! Python of a venv that has PyPI's `mooncake-transfer-engine-non-cuda`
//! (`bench/scripts/setup_mooncake.sh` makes one). The script starts
//! `mooncake_master`, a storage process that mounts the segment the blocks
//! are written into, and one client process per connection, each putting its
//! share of the blocks with one `batch_put_from` from a registered buffer and
//! reading them back with one `batch_get_into`, over Mooncake's TCP transport
//! on loopback. One round per call, so that its rounds interleave with the
//! other paths' like Redis's do; its start-up is outside the timing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

const SCRIPT: &str = include_str!("../../scripts/mooncake_peer.py");

/// One round's put and get times of `blocks` blocks of `block_size` bytes
/// over `connections` client processes.
pub fn round(
    python: &Path,
    dir: &Path,
    connections: usize,
    blocks: usize,
    block_size: u64,
) -> Result<(Duration, Duration)> {
    let script = dir.join("mooncake_peer.py");
    if !script.exists() {
        std::fs::write(&script, SCRIPT)?;
    }
    let out = Command::new(python)
        .arg(&script)
        .args(["--blocks", &blocks.to_string()])
        .args(["--block-size", &block_size.to_string()])
        .args(["--clients", &connections.to_string()])
        .args(["--rounds", "1"])
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.lines().any(|l| l == "RESULT ok") {
        // The first errors any of its processes reported (Python exceptions,
        // glog E lines), then the end of the output.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("Error") || l.starts_with('E'))
            .take(8)
            .collect();
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
        lines.extend(tail.into_iter().rev());
        bail!(
            "mooncake_peer.py exited with {}: {}",
            out.status,
            lines.join("\n")
        );
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ROUND "))
        .ok_or_else(|| anyhow!("mooncake_peer.py printed no ROUND line"))?;
    let field = |name: &str| -> Result<Duration> {
        let v: f64 = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| anyhow!("{name} missing in {line:?}"))?
            .parse()?;
        Ok(Duration::from_secs_f64(v))
    };
    Ok((field("put_s")?, field("get_s")?))
}
