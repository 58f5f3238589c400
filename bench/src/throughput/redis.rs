//! Redis 7 baseline: `redis-server` started on a free loopback port with
//! persistence off, driven by a minimal RESP client (SET/GET of the same values).

use std::io::{BufRead, BufReader, Read, Write};
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

    /// SETs then GETs `blocks` values over `connections` clients; returns both times.
    pub fn set_get(
        &self,
        connections: usize,
        blocks: usize,
        value: &Bytes,
        round: usize,
    ) -> Result<(Duration, Duration)> {
        let per = blocks.div_ceil(connections);
        let run = |get: bool| -> Result<Duration> {
            let started = Instant::now();
            let handles: Vec<_> = (0..connections)
                .map(|c| {
                    let value = value.clone();
                    let port = self.port;
                    std::thread::spawn(move || -> Result<()> {
                        let sock = TcpStream::connect(("127.0.0.1", port))?;
                        sock.set_nodelay(true)?;
                        let mut reader = BufReader::with_capacity(4 << 20, sock.try_clone()?);
                        let mut writer = sock;
                        let mut buf = vec![0u8; value.len() + 2];
                        for i in 0..per {
                            let key = format!("r{round}:c{c}:{i}");
                            if get {
                                let command =
                                    format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
                                writer.write_all(command.as_bytes())?;
                                let mut header = String::new();
                                reader.read_line(&mut header)?;
                                let len: usize = header
                                    .trim_end()
                                    .strip_prefix('$')
                                    .and_then(|n| n.parse().ok())
                                    .ok_or_else(|| anyhow!("bad GET reply {header:?}"))?;
                                if len != value.len() {
                                    bail!("redis returned {len} bytes");
                                }
                                reader.read_exact(&mut buf)?;
                            } else {
                                // One buffer per command: no small writes for Nagle to hold back.
                                let mut command = format!(
                                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                                    key.len(),
                                    value.len()
                                )
                                .into_bytes();
                                command.extend_from_slice(&value);
                                command.extend_from_slice(b"\r\n");
                                writer.write_all(&command)?;
                                let mut reply = String::new();
                                reader.read_line(&mut reply)?;
                                if reply != "+OK\r\n" {
                                    bail!("bad SET reply {reply:?}");
                                }
                            }
                        }
                        Ok(())
                    })
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
