//! Where a workspace binary is.
//!
//! Tests and benchmarks run the binaries cargo built in the same profile:
//! `target/<profile>/<name>`, the directory of the running executable (a
//! benchmark binary) or its parent (a test executable in `deps/`). An
//! environment variable or an explicit path (a `--server-bin` flag) wins;
//! an explicit directory (a `--bin-dir` flag) replaces the search.

use std::path::{Path, PathBuf};

use crate::Error;

/// A binary to look up; see the module doc for the order.
#[derive(Debug, Clone, Default)]
pub struct Binary {
    name: String,
    env: Option<String>,
    explicit: Option<PathBuf>,
    dir: Option<PathBuf>,
    hint: Option<String>,
}

impl Binary {
    /// The binary called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// `$var`, when set, is the path (taken as is).
    pub fn env(mut self, var: impl Into<String>) -> Self {
        self.env = Some(var.into());
        self
    }

    /// This path, when given, is the binary (taken as is).
    pub fn explicit(mut self, path: Option<&Path>) -> Self {
        self.explicit = path.map(Path::to_path_buf);
        self
    }

    /// Look in `dir`, when given, instead of next to the executable.
    pub fn dir(mut self, dir: Option<&Path>) -> Self {
        self.dir = dir.map(Path::to_path_buf);
        self
    }

    /// The other way to point at it, for the not-found message
    /// (`"pass --bin-dir"`); default `"set $VAR"` when there is a variable.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The binary's path; [`Error::BinaryNotFound`] (saying how to build it)
    /// when the searched directory lacks it.
    pub fn find(&self) -> Result<PathBuf, Error> {
        if let Some(path) = &self.explicit {
            return Ok(path.clone());
        }
        if let Some(path) = self.env.as_ref().and_then(std::env::var_os) {
            return Ok(PathBuf::from(path));
        }
        let dir = match &self.dir {
            Some(dir) => dir.clone(),
            None => profile_dir()?,
        };
        let path = dir.join(&self.name);
        if !path.exists() {
            let hint = self
                .hint
                .clone()
                .or_else(|| self.env.as_ref().map(|v| format!("set {v}")));
            return Err(Error::BinaryNotFound { path, hint });
        }
        Ok(path)
    }
}

/// `target/<profile>/` of the running executable.
pub fn profile_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(Error::io("locating the current executable"))?;
    let dir = exe.parent().ok_or_else(|| Error::Io {
        what: format!("no directory above {}", exe.display()),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    Ok(match dir.parent() {
        Some(up) if dir.file_name().is_some_and(|n| n == "deps") => up.to_path_buf(),
        _ => dir.to_path_buf(),
    })
}

/// Shorthand of the tests: `name` built next to them, or `$env_override`.
pub fn binary(name: &str, env_override: &str) -> Result<PathBuf, Error> {
    Binary::new(name).env(env_override).find()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_and_env_win_without_a_check() {
        let p = Binary::new("nope")
            .explicit(Some(Path::new("/x/y")))
            .find()
            .unwrap();
        assert_eq!(p, PathBuf::from("/x/y"));
        std::env::set_var("KVTIER_TESTKIT_UNIT_BIN", "/a/b");
        let p = binary("nope", "KVTIER_TESTKIT_UNIT_BIN").unwrap();
        assert_eq!(p, PathBuf::from("/a/b"));
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binary::new("kvtier-nothing")
            .dir(Some(dir.path()))
            .hint("pass --bin-dir")
            .find()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cargo build --release --workspace --bins"),
            "{err}"
        );
        assert!(err.ends_with("(or pass --bin-dir)"), "{err}");
        std::fs::write(dir.path().join("kvtier-here"), b"").unwrap();
        let found = Binary::new("kvtier-here")
            .dir(Some(dir.path()))
            .find()
            .unwrap();
        assert_eq!(found, dir.path().join("kvtier-here"));
    }

    #[test]
    fn a_test_executable_looks_above_deps() {
        let dir = profile_dir().unwrap();
        assert_ne!(dir.file_name().unwrap(), "deps");
    }
}
