//! `--pin`: the benchmark's client on the first half of the machine's CPUs,
//! every service process on the other half, so that the measured rates
//! compare the services' own capacity rather than services plus client.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// CPU lists (`taskset -c` syntax) of the client and of the services under `--pin`.
#[derive(Debug, Clone)]
pub struct Pinning {
    pub client: Vec<usize>,
    pub services: String,
}

impl Pinning {
    /// The split of this machine's CPUs, or `None` without `--pin`.
    pub fn new(pin: bool) -> Result<Option<Self>> {
        if !pin {
            return Ok(None);
        }
        // The machine's CPUs, not this thread's (which `bind_client` narrows).
        // SAFETY: sysconf reads a system constant.
        let cpus = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
            .context("sysconf(_SC_NPROCESSORS_ONLN)")?;
        anyhow::ensure!(
            cpus >= 2,
            "--pin needs at least 2 CPUs, this machine has {cpus}"
        );
        let half = cpus / 2;
        Ok(Some(Self {
            client: (0..half).collect(),
            services: format!("{half}-{}", cpus - 1),
        }))
    }

    /// Binds the calling thread (and the threads it starts later) to the client's CPUs.
    pub fn bind_client(&self) -> Result<()> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
        // sched_setaffinity only read and write the set given.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &self.client {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                bail!(
                    "sched_setaffinity to CPUs {:?}: {}",
                    self.client,
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(())
    }
}

/// A command for a service process: under `taskset -c <service CPUs>` when pinning.
pub fn service_command(program: &Path, pinning: Option<&Pinning>) -> Command {
    match pinning {
        Some(pinning) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &pinning.services]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}
