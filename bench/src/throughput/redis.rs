//! Redis 7 baseline: `redis-server` started on a free loopback port with
//! persistence off, driven by a minimal RESP client (SET/GET of the same values).
//!
//! The client is Redis at its best, measured the way kvtier's data-plane
//! client works: each connection has a writer thread that sends every
//! command back to back while a reader thread takes the replies (pipelined
//! to the same depth as `DataClient::put_many` / `get_many_each`: all of the
//! connection's requests, bounded only by the socket buffers), and a SET
//! writes its header, the caller's value and the trailing CRLF with one
//! vectored write (no copy of the value into a command buffer). GET replies
//! are read into one reused buffer per connection.

use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

/// Writes every slice of `parts` in full with vectored writes.
fn write_all_vectored(w: &mut impl Write, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<IoSlice<'_>> = parts[first..].iter().map(|p| IoSlice::new(p)).collect();
        let mut n = w.write_vectored(&slices)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let take = n.min(parts[first].len());
            parts[first] = &parts[first][take..];
            n -= take;
            if parts[first].is_empty() {
                first += 1;
            }
        }
    }
    Ok(())
}

/// One connection's pipelined SETs (or GETs) of `keys`: a writer thread sends
/// every command while this thread reads the replies.
fn pipelined(port: u16, keys: Vec<String>, value: Bytes, get: bool) -> Result<()> {
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(64 << 10, sock.try_clone()?);
    let mut writer = sock;
    let n = keys.len();
    let len = value.len();
    let sender = std::thread::spawn(move || -> Result<()> {
        if get {
            // GET commands are small: one buffer for them all.
            let mut all = Vec::new();
            for key in &keys {
                write!(all, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len())?;
            }
            writer.write_all(&all)?;
        } else {
            for key in &keys {
                let head = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${len}\r\n", key.len());
                write_all_vectored(&mut writer, &[head.as_bytes(), &value, b"\r\n"])?;
            }
        }
        writer.flush()?;
        Ok(())
    });
    let mut buf = vec![0u8; len + 2];
    let mut line = String::new();
    for _ in 0..n {
        line.clear();
        reader.read_line(&mut line)?;
        if get {
            let got: usize = line
                .trim_end()
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("bad GET reply {line:?}"))?;
            if got != len {
                bail!("redis returned {got} bytes");
            }
            reader.read_exact(&mut buf)?;
        } else if line != "+OK\r\n" {
            bail!("bad SET reply {line:?}");
        }
    }
    sender
        .join()
        .map_err(|_| anyhow!("redis writer panicked"))??;
    Ok(())
}

impl RedisServer {
    /// Starts redis-server on a free port; fails when it is not installed.
    pub fn start() -> Result<Self> {
        let port = kvtier_testkit::free_port()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--proto-max-bulk-len",
                "1gb",
                // Pipelined clients may have many replies queued.
                "--client-output-buffer-limit",
                "normal 0 0 0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self { child, port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("redis-server did not start")
    }

    /// `redis-benchmark -t set,get` against this server (when installed),
    /// with `-P depth` pipelining: SET and GET in MiB/s. Its own conditions,
    /// not the same as [`RedisServer::set_get`]'s: every SET overwrites one
    /// key (so the server reuses the memory it just freed) and every GET
    /// reads that one cache-hot value back.
    pub fn redis_benchmark(
        &self,
        connections: usize,
        requests: usize,
        depth: usize,
        value_bytes: usize,
    ) -> Result<(f64, f64)> {
        let out = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                "set,get",
                "-q",
            ])
            .args([
                "-d",
                &value_bytes.to_string(),
                "-c",
                &connections.to_string(),
            ])
            .args(["-n", &requests.to_string(), "-P", &depth.to_string()])
            .stderr(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("redis-benchmark exited with {}", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let rate = |op: &str| -> Result<f64> {
            // Lines look like "SET: 1234.57 requests per second, p50=…"
            // (progress updates before them end in '\r').
            let line = text
                .split(['\n', '\r'])
                .filter(|l| l.starts_with(&format!("{op}: ")))
                .find(|l| l.contains("requests per second"))
                .ok_or_else(|| anyhow!("no {op} line in redis-benchmark's output"))?;
            let per_s: f64 = line[op.len() + 2..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("bad redis-benchmark line {line:?}"))?;
            Ok(per_s * value_bytes as f64 / (1 << 20) as f64)
        };
        Ok((rate("SET")?, rate("GET")?))
    }

    /// SETs then GETs `blocks` values over `connections` pipelined clients;
    /// returns both times.
    pub fn set_get(
        &self,
        connections: usize,
        blocks: usize,
        value: &Bytes,
        round: usize,
    ) -> Result<(Duration, Duration)> {
        let per = blocks.div_ceil(connections);
        let run = |get: bool| -> Result<Duration> {
            // Keys are formatted before the clock starts.
            let keys: Vec<Vec<String>> = (0..connections)
                .map(|c| (0..per).map(|i| format!("r{round}:c{c}:{i}")).collect())
                .collect();
            let started = Instant::now();
            let handles: Vec<_> = keys
                .into_iter()
                .map(|keys| {
                    let value = value.clone();
                    let port = self.port;
                    std::thread::spawn(move || pipelined(port, keys, value, get))
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow!("redis client panicked"))??;
            }
            Ok(started.elapsed())
        };
        let set = run(false)?;
        let get = run(true)?;
        Ok((set, get))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
