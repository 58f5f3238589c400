//! A started child: its ready line, signals, and a stop on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{ReadyLine, Stop};
use crate::error::{Error, NotReady};

/// How often a stopping child is polled for its exit.
const POLL: Duration = Duration::from_millis(20);

/// A running child process (see [`super::Launch`]). Stopped on drop as its
/// [`Stop`] says, unless it was killed or terminated already.
#[derive(Debug)]
pub struct Process {
    /// Dropped before the child is stopped: a child reading stdin sees EOF.
    stdin: Option<ChildStdin>,
    /// `None` once killed or terminated.
    child: Option<Child>,
    pid: u32,
    name: String,
    log_path: Option<PathBuf>,
    line: ReadyLine,
    ready_after: Duration,
    lines: Option<mpsc::Receiver<String>>,
    stop: Stop,
}

impl Process {
    pub(super) fn new(
        mut child: Child,
        name: String,
        log_path: Option<PathBuf>,
        stop: Stop,
    ) -> Self {
        Self {
            stdin: child.stdin.take(),
            pid: child.id(),
            child: Some(child),
            name,
            log_path,
            line: ReadyLine::new(""),
            ready_after: Duration::ZERO,
            lines: None,
            stop,
        }
    }

    pub(super) fn set_ready(
        &mut self,
        line: ReadyLine,
        after: Duration,
        lines: Option<mpsc::Receiver<String>>,
    ) {
        self.line = line;
        self.ready_after = after;
        self.lines = lines;
    }

    /// The child closed stdout before it was ready: give it a moment to
    /// exit and return its code (`None`: a signal, or it had to be killed).
    pub(super) fn exit_code_soon(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return status.code();
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(_) => break,
            }
        }
        None
    }

    /// `Some(exit code)` once the child has exited on its own (the code is
    /// `None` after a signal); `None` while it runs.
    pub(super) fn exited(&mut self) -> Option<Option<i32>> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.code())
    }

    /// Kills (and reaps) the child and wraps `reason` with its log.
    pub(super) fn not_ready(mut self, reason: NotReady) -> Error {
        let _ = self.kill();
        Error::NotReady {
            name: std::mem::take(&mut self.name),
            reason,
            log: self.log(),
            log_path: self.log_path.take(),
        }
    }

    /// The ready line.
    pub fn line(&self) -> &ReadyLine {
        &self.line
    }

    /// Time from spawn to the ready line.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Stdout lines after the ready line, when launched with
    /// [`super::Launch::keep_lines`] (once).
    pub fn take_lines(&mut self) -> Option<mpsc::Receiver<String>> {
        self.lines.take()
    }

    /// The child's stdin, when launched with `stdin(Stdio::piped())` (once).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stderr log file, when there is one.
    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// The stderr log so far (empty when stderr is not logged).
    pub fn log(&self) -> String {
        self.log_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Whether it was neither killed nor terminated here (it may have exited
    /// on its own).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` (`libc::SIGHUP`, ...) to the child.
    pub fn signal(&self, signal: libc::c_int) -> Result<(), Error> {
        if self.child.is_none() {
            return Err(Error::Stopped(self.name.clone()));
        }
        send(self.pid, signal).map_err(Error::io(format!("signal {signal} to {}", self.name)))
    }

    /// SIGKILL, and reap it. Does nothing when already stopped.
    pub fn kill(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            let what = format!("kill {}", self.name);
            child.kill().map_err(Error::io(what.clone()))?;
            child.wait().map_err(Error::io(what))?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `within` (`Duration::MAX`: for ever) for the
    /// exit code (`-1` when a signal ended it). Past `within` it is killed.
    pub fn terminate(&mut self, within: Duration) -> Result<i32, Error> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Stopped(self.name.clone()));
        };
        drop(self.stdin.take());
        let what = format!("SIGTERM to {}", self.name);
        send(self.pid, libc::SIGTERM).map_err(Error::io(what.clone()))?;
        let deadline = Instant::now().checked_add(within);
        loop {
            if let Some(status) = child.try_wait().map_err(Error::io(what.clone()))? {
                return Ok(status.code().unwrap_or(-1));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::StopTimeout {
                    name: self.name.clone(),
                    within,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`; Linux).
    pub fn status_kib(&self, field: &str) -> Result<u64, Error> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).map_err(Error::io(format!("reading {path}")))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| Error::Field {
                key: field.to_string(),
                line: path,
                problem: "no",
            })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Stop::Terminate(grace) = self.stop {
            if send(self.pid, libc::SIGTERM).is_ok() {
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(POLL);
                }
                eprintln!(
                    "{} did not exit {} s after SIGTERM: killed",
                    self.name,
                    grace.as_secs_f64()
                );
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `kill(2)`.
fn send(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
