//! Smoke test of `kvtier-bench system`: a tiny synthetic agentic workload
//! (no trace files needed) through the real server, agents, simulated
//! workers and router, in the four configurations. Seconds.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use kvtier_integration_tests::binary;

#[test]
fn system_replay_runs_the_four_configurations_with_sane_numbers() -> Result<()> {
    let bench = binary("kvtier-bench", "KVTIER_BENCH_BIN")?;
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("system.json");
    let svg = dir.path().join("system.svg");
    let bin_dir = bench
        .parent()
        .context("no parent of kvtier-bench")?
        .to_path_buf();
    // 4 sessions x 6 calls that each extend the session's context, over 2
    // workers whose pools hold every context: affinity keeps each session
    // on one worker, round-robin scatters it (so (d) >= (a) must hold).
    let out = Command::new(&bench)
        .args([
            "system",
            "--sessions",
            "4",
            "--max-calls",
            "6",
            "--workers",
            "2",
            "--pool-blocks",
            "512",
            "--synthetic-base-blocks",
            "64",
            "--synthetic-grow-blocks",
            "16",
            "--synthetic-think-ms",
            "1000",
            "--speed",
            "10",
            "--json",
        ])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .context("run kvtier-bench system")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "kvtier-bench system failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }
    for key in ["(a)", "(b)", "(c)", "(d)"] {
        assert!(
            stdout.contains(key),
            "{key} missing from the table:\n{stdout}"
        );
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let ideal = report["ideal"].as_f64().context("ideal")?;
    assert!((0.0..=1.0).contains(&ideal) && ideal > 0.5, "{report}");
    let rows = report["rows"].as_array().context("rows")?;
    assert_eq!(rows.len(), 4, "{report}");
    let hit = |key: &str| -> f64 {
        rows.iter()
            .find(|r| r["key"] == key)
            .and_then(|r| r["hit_rate"].as_f64())
            .unwrap_or(-1.0)
    };
    for r in rows {
        let h = r["hit_rate"].as_f64().context("hit_rate")?;
        let client = r["client_hit_rate"].as_f64().context("client_hit_rate")?;
        assert!((0.0..=1.0).contains(&h), "{r}");
        assert!(h <= ideal + 1e-9, "no hit beyond the ideal: {r}");
        assert!(
            (h - client).abs() < 1e-6,
            "workers' counters and the client agree: {r}"
        );
        assert_eq!(r["failed"], 0, "{r}\n{stderr}");
        assert_eq!(r["ok"], 24, "{r}");
        assert!(r["ttft_p99_ms"].as_f64().unwrap_or(-1.0) > 0.0, "{r}");
    }
    assert!(
        hit("d") >= hit("a"),
        "full kvtier below round-robin: {report}"
    );
    assert!(
        hit("d") >= 0.9 * ideal,
        "full kvtier far from the ideal: {report}"
    );
    let svg = std::fs::read_to_string(&svg)?;
    assert!(svg.starts_with("<svg") && svg.contains("(d)"));
    Ok(())
}
