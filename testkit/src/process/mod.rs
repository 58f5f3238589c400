//! A child process that announces it serves with a ready line on stdout.
//!
//! [`Launch`] spawns a binary (stderr to a log file or inherited), reads its
//! stdout on a thread of its own and waits, with a timeout, for the line that
//! starts with the ready prefix (by default `"<binary> ready"`). The thread
//! keeps draining stdout afterwards, so the child never blocks on a full
//! pipe. What comes back is a [`Process`]: the ready line's `key=value`
//! fields, SIGTERM / SIGKILL, and a stop on drop (SIGKILL unless told
//! otherwise), so a failing test never leaves a server behind.
//!
//! ```no_run
//! # fn main() -> Result<(), kvtier_testkit::Error> {
//! use kvtier_testkit::{binary, Launch};
//! let server = Launch::new(binary("kvtier-server", "KVTIER_SERVER_BIN")?)
//!     .args(["--listen", "127.0.0.1:0"])
//!     .log_append("/tmp/server.log")
//!     .spawn()?;
//! let grpc: std::net::SocketAddr = server.line().parse("grpc")?;
//! # Ok(()) }
//! ```

mod line;
mod running;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use line::ReadyLine;
pub use running::Process;

use crate::error::{Error, NotReady};

/// Signal numbers for [`Process::signal`], so that callers need no libc.
pub mod signal {
    pub use libc::{SIGCONT, SIGHUP, SIGINT, SIGKILL, SIGSTOP, SIGTERM, SIGUSR1, SIGUSR2};
}

/// How a [`Process`] is stopped when it is dropped while still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    /// SIGKILL at once (tests: nothing to flush).
    #[default]
    Kill,
    /// SIGTERM, then SIGKILL (with a note on stderr) after this long.
    Terminate(Duration),
}

/// Where the child's stderr goes.
#[derive(Debug, Clone)]
enum Stderr {
    Inherit,
    /// A log file; `true`: appended to (a restarted server keeps one log).
    File(PathBuf, bool),
}

/// A check that a child without a ready line serves (e.g. a health
/// endpoint answers); see [`Launch::ready_when`].
pub struct ReadyProbe(Box<dyn FnMut() -> bool + Send>);

impl std::fmt::Debug for ReadyProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadyProbe")
    }
}

/// How often a [`ReadyProbe`] is asked.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// How to start a child and recognise its ready line. Defaults: stderr and
/// stdin inherited, ready prefix `"<file name> ready"`, 60 s to get there,
/// the first stdout line must be the ready one, SIGKILL on drop.
#[derive(Debug)]
pub struct Launch {
    command: Command,
    name: String,
    ready: Option<String>,
    probe: Option<ReadyProbe>,
    stderr: Stderr,
    timeout: Duration,
    skip_other_lines: bool,
    keep_lines: bool,
    stop: Stop,
}

/// The default time a child has to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Launch {
    /// Starts `program` (a path or a name on `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self::from_command(Command::new(program))
    }

    /// Starts a prepared command (e.g. `taskset -c 2,3 <binary>`); the name
    /// in messages is its program's unless [`Launch::name`] says otherwise.
    pub fn from_command(command: Command) -> Self {
        let name = Path::new(command.get_program())
            .file_name()
            .map_or_else(|| "child".into(), |n| n.to_string_lossy().into_owned());
        Self {
            command,
            name,
            ready: None,
            probe: None,
            stderr: Stderr::Inherit,
            timeout: READY_TIMEOUT,
            skip_other_lines: false,
            keep_lines: false,
            stop: Stop::Kill,
        }
    }

    /// The name used in messages and in the default ready prefix.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Sets an environment variable of the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Sets the child's stdin (e.g. `Stdio::piped()`; see [`Process::take_stdin`]).
    pub fn stdin(mut self, stdin: Stdio) -> Self {
        self.command.stdin(stdin);
        self
    }

    /// Stderr to `path`, truncated first.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr = Stderr::File(path.into(), false);
        self
    }

    /// Stderr appended to `path` (a restart keeps the earlier run's lines).
    pub fn log_append(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr = Stderr::File(path.into(), true);
        self
    }

    /// The ready line starts with `prefix` (default `"<name> ready"`).
    pub fn ready(mut self, prefix: impl Into<String>) -> Self {
        self.ready = Some(prefix.into());
        self
    }

    /// For a program that prints no ready line (a third-party server): it is
    /// ready once `probe` returns true (asked every 50 ms; its stdout is
    /// drained and ignored). The [`Process`]'s ready line is then empty.
    pub fn ready_when(mut self, probe: impl FnMut() -> bool + Send + 'static) -> Self {
        self.probe = Some(ReadyProbe(Box::new(probe)));
        self
    }

    /// How long the child has to print its ready line (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Lines before the ready line are skipped instead of failing the start.
    pub fn skip_other_lines(mut self) -> Self {
        self.skip_other_lines = true;
        self
    }

    /// Lines after the ready line are kept for [`Process::take_lines`]
    /// instead of being drained away.
    pub fn keep_lines(mut self) -> Self {
        self.keep_lines = true;
        self
    }

    /// How the process is stopped on drop (default [`Stop::Kill`]).
    pub fn stop_on_drop(mut self, stop: Stop) -> Self {
        self.stop = stop;
        self
    }

    /// Spawns the child and waits for its ready line. On any failure the
    /// child is gone (killed and reaped) when this returns.
    pub fn spawn(mut self) -> Result<Process, Error> {
        let prefix = self
            .ready
            .take()
            .unwrap_or_else(|| format!("{} ready", self.name));
        let log_path = match &self.stderr {
            Stderr::Inherit => None,
            Stderr::File(path, append) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(*append)
                    .truncate(!*append)
                    .open(path)
                    .map_err(Error::io(format!("opening {}", path.display())))?;
                self.command.stderr(Stdio::from(file));
                Some(path.clone())
            }
        };
        let started = Instant::now();
        let mut child = self
            .command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(Error::io(format!("spawn {}", self.name)))?;
        let stdout = child.stdout.take();
        let mut process = Process::new(child, self.name, log_path, self.stop);
        let Some(stdout) = stdout else {
            return Err(process.not_ready(NotReady::Exited(None)));
        };
        let lines = read_lines(stdout);
        let deadline = started + self.timeout;
        if let Some(ReadyProbe(mut probe)) = self.probe.take() {
            drop(lines);
            loop {
                if probe() {
                    process.set_ready(ReadyLine::new(""), started.elapsed(), None);
                    return Ok(process);
                }
                if let Some(code) = process.exited() {
                    return Err(process.not_ready(NotReady::Exited(code)));
                }
                if Instant::now() >= deadline {
                    return Err(process.not_ready(NotReady::Timeout(self.timeout)));
                }
                std::thread::sleep(PROBE_EVERY);
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with(&prefix) => {
                    let kept = self.keep_lines.then_some(lines);
                    process.set_ready(ReadyLine::new(line), started.elapsed(), kept);
                    return Ok(process);
                }
                Ok(_) if self.skip_other_lines => continue,
                Ok(line) => return Err(process.not_ready(NotReady::Printed(line))),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(process.not_ready(NotReady::Timeout(self.timeout)))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let code = process.exit_code_soon();
                    return Err(process.not_ready(NotReady::Exited(code)));
                }
            }
        }
    }
}

/// Reads `stdout` line by line on a thread of its own until EOF; lines go
/// to the returned channel while someone listens, and are dropped after.
fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        let mut listening = true;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if listening {
                let line = ReadyLine::new(String::from_utf8_lossy(&buf))
                    .text()
                    .to_owned();
                listening = tx.send(line).is_ok();
            }
        }
    });
    rx
}
