//! A test whose prerequisite is missing (a Python package, root, a GPU):
//! skipped loudly on a developer's machine, failed in CI.
//!
//! ```no_run
//! # fn gpu() -> Option<()> { None }
//! let Some(_gpu) = gpu() else {
//!     kvtier_testkit::prereq::missing("a CUDA device", "run on a host with an NVIDIA GPU");
//!     return;
//! };
//! ```

/// Whether this run is CI: `CI` is `true` (any case) or `1`, as GitHub
/// Actions, GitLab and most CI systems set it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| ci_value(&v))
}

fn ci_value(v: &str) -> bool {
    v.eq_ignore_ascii_case("true") || v == "1"
}

/// The line [`missing`] prints, or (in CI) the panic message.
fn verdict(ci: bool, what: &str, how_to_get: &str) -> Result<String, String> {
    let line = format!("SKIPPED: {what} ({how_to_get})");
    if ci {
        Err(format!(
            "{line}: CI=true, so a test whose prerequisite is missing fails instead of \
             passing without having run"
        ))
    } else {
        Ok(line)
    }
}

/// Says that the calling test cannot run because `what` is missing;
/// `how_to_get` tells the reader how to provide it. With `CI=true` this
/// panics (the test fails: in CI a test that did not run must not pass);
/// otherwise it prints `SKIPPED: <what> (<how_to_get>)` to stderr and the
/// caller returns.
#[track_caller]
pub fn missing(what: &str, how_to_get: &str) {
    match verdict(in_ci(), what, how_to_get) {
        Ok(line) => eprintln!("{line}"),
        Err(message) => panic!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_fails_and_elsewhere_says_skipped() {
        assert_eq!(
            verdict(false, "root", "run as root").as_deref(),
            Ok("SKIPPED: root (run as root)")
        );
        let err = verdict(true, "root", "run as root").unwrap_err();
        assert!(
            err.starts_with("SKIPPED: root (run as root): CI=true"),
            "{err}"
        );
        for (v, ci) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("false", false),
            ("", false),
        ] {
            assert_eq!(ci_value(v), ci, "CI={v:?}");
        }
    }
}
