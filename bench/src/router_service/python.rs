//! The Python side: a python3 that can import `dynamo` (PyPI
//! `ai-dynamo-runtime`, pinned), `zmq` and `msgspec`, for Dynamo's indexer
//! peer and the vLLM event publisher. Given with `--python`, found in the
//! venv, or installed into the venv with pip; without python3 or pip the
//! benchmark is skipped rather than failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use super::Args;

/// The Dynamo release the peer script is written against.
pub const DYNAMO_PIN: &str = "ai-dynamo-runtime==1.6.0";

fn runs(python: &Path, args: &[&str]) -> bool {
    Command::new(python)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What a missing Python means for the run.
pub enum PythonStatus {
    /// The interpreter and the versions the peer's `--check` printed.
    Ready(PathBuf, String),
    /// python or pip is not there: the benchmark is skipped.
    Unavailable(String),
}

/// Finds (or installs into a venv) a Python with ai-dynamo-runtime, pyzmq, msgspec.
pub fn find_python(args: &Args, peer_script: &Path) -> Result<PythonStatus> {
    let check = |python: &Path| -> Option<String> {
        let out = Command::new(python)
            .arg(peer_script)
            .arg("--check")
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if let Some(p) = &args.python {
        return match check(p) {
            Some(v) => Ok(PythonStatus::Ready(p.clone(), v)),
            None => bail!(
                "{} cannot import dynamo, zmq and msgspec: pip install {DYNAMO_PIN} pyzmq msgspec",
                p.display()
            ),
        };
    }
    let venv = match &args.venv {
        Some(v) => v.clone(),
        None => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/kvtier-dynamo-venv"),
    };
    let vpy = venv.join("bin/python");
    if vpy.exists() {
        if let Some(v) = check(&vpy) {
            return Ok(PythonStatus::Ready(vpy, v));
        }
    }
    let system = PathBuf::from("python3");
    if !runs(&system, &["--version"]) {
        return Ok(PythonStatus::Unavailable("no python3 on PATH".into()));
    }
    if !vpy.exists() {
        eprintln!("creating {} ...", venv.display());
        let ok = Command::new(&system)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Ok(PythonStatus::Unavailable(
                "python3 -m venv failed (no venv/ensurepip module)".into(),
            ));
        }
    }
    if !runs(&vpy, &["-m", "pip", "--version"]) {
        return Ok(PythonStatus::Unavailable(format!(
            "no pip in {}",
            venv.display()
        )));
    }
    eprintln!(
        "installing {DYNAMO_PIN} pyzmq msgspec into {} ...",
        venv.display()
    );
    let ok = Command::new(&vpy)
        .args([
            "-m", "pip", "install", "--quiet", DYNAMO_PIN, "pydantic", "uvloop", "pyzmq", "msgspec",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    match (ok, check(&vpy)) {
        (true, Some(v)) => Ok(PythonStatus::Ready(vpy, v)),
        _ => bail!(
            "pip install {DYNAMO_PIN} pyzmq msgspec into {} failed",
            venv.display()
        ),
    }
}
