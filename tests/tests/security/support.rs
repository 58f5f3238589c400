//! Helpers of the security tests: a server process whose pid we know (for
//! SIGHUP, kill -9 and RSS), test certificates made with rcgen, and requests
//! carrying bearer tokens.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use kvtier_integration_tests::binary;
use kvtier_proto::v1::cache_service_client::CacheServiceClient;
use kvtier_proto::v1::*;
use kvtier_testkit::process::signal;
use kvtier_testkit::{Error, Launch, NotReady, Process};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Request;

/// A `kvtier-server` child process. SIGKILLed on drop.
pub struct Proc {
    process: Process,
    /// gRPC address from the ready line.
    pub grpc: SocketAddr,
    /// `/metrics` address, when enabled.
    pub metrics: Option<SocketAddr>,
    /// Process id.
    pub pid: u32,
}

impl Proc {
    /// Starts `kvtier-server --listen 127.0.0.1:0 --metrics-listen off --data-dir <dir> <args>`.
    pub fn start(data_dir: &Path, args: &[&str]) -> Result<Self> {
        Self::start_with(data_dir, &["--listen", "127.0.0.1:0"], args)
    }

    /// Like [`Proc::start`] on `dir/data`, accepting the token-file lines
    /// `tokens` (written to `dir/tokens`, see [`token_line`]), plus `args`.
    pub fn start_with_tokens(dir: &Path, tokens: &str, args: &[&str]) -> Result<Self> {
        let file = dir.join("tokens");
        std::fs::write(&file, tokens)?;
        let file = file.display().to_string();
        let mut all = vec!["--tokens-file", file.as_str()];
        all.extend_from_slice(args);
        Self::start(&dir.join("data"), &all)
    }

    /// Like [`Proc::start`] with explicit listen arguments.
    pub fn start_with(data_dir: &Path, listen: &[&str], args: &[&str]) -> Result<Self> {
        match Self::spawn(data_dir, listen, args)? {
            Ok(p) => Ok(p),
            Err((code, log)) => bail!("kvtier-server exited ({code:?}) before ready:\n{log}"),
        }
    }

    /// Spawns; `Err((exit code, log))` when the server exits instead of becoming ready.
    pub fn spawn(
        data_dir: &Path,
        listen: &[&str],
        args: &[&str],
    ) -> Result<std::result::Result<Self, (Option<i32>, String)>> {
        let metrics_off: &[&str] = if listen.contains(&"--metrics-listen") {
            &[]
        } else {
            &["--metrics-listen", "off"]
        };
        let launched = Launch::new(binary("kvtier-server", "KVTIER_SERVER_BIN")?)
            .name("kvtier-server")
            .args(listen)
            .args(metrics_off)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("KVTIER_LOG", "info")
            .log_append(data_dir.with_extension("log"))
            .spawn();
        let process = match launched {
            Ok(process) => process,
            Err(Error::NotReady { reason, log, .. }) => {
                let code = match reason {
                    NotReady::Exited(code) => code,
                    // Killed by the harness.
                    NotReady::Timeout(_) | NotReady::Printed(_) => None,
                };
                return Ok(Err((code, log)));
            }
            Err(e) => return Err(e.into()),
        };
        let line = process.line();
        Ok(Ok(Self {
            grpc: line.parse("grpc")?,
            metrics: line.get("metrics").and_then(|a| a.parse().ok()),
            pid: process.pid(),
            process,
        }))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let signal = match name {
            "HUP" => signal::SIGHUP,
            "TERM" => signal::SIGTERM,
            "KILL" => signal::SIGKILL,
            other => bail!("unknown signal {other}"),
        };
        Ok(self.process.signal(signal)?)
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) -> Result<()> {
        Ok(self.process.kill()?)
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        Ok(self.process.status_kib(field)?)
    }

    /// A plaintext client.
    pub async fn client(&self) -> Result<CacheServiceClient<Channel>> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))?
            .connect()
            .await?;
        Ok(big(CacheServiceClient::new(channel)))
    }

    /// A TLS client trusting `ca`, optionally presenting `identity`.
    pub async fn tls_client(
        &self,
        ca: &Pem,
        identity: Option<&Pem>,
    ) -> Result<CacheServiceClient<Channel>> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca.cert))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
        }
        let channel = Channel::from_shared(format!("https://{}", self.grpc))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(big(CacheServiceClient::new(channel)))
    }
}

fn big(c: CacheServiceClient<Channel>) -> CacheServiceClient<Channel> {
    c.max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// Writes `<name>.pem` and `<name>.key` under `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert)?;
        std::fs::write(&key, &self.key)?;
        Ok((cert, key))
    }
}

/// A test CA able to sign leaf certificates.
pub struct TestCa {
    pub pem: Pem,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A fresh self-signed CA.
    pub fn new(name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A leaf certificate for `localhost` / 127.0.0.1 signed by this CA.
    pub fn leaf(&self, common_name: &str) -> Result<Pem> {
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

/// Handshake with a token; returns (session id, effective seed).
pub async fn handshake_as(
    client: &mut CacheServiceClient<Channel>,
    token: &str,
    namespace: &str,
    config: HashingConfig,
) -> std::result::Result<(String, u64), tonic::Status> {
    let r = client
        .handshake(authed(
            HandshakeRequest {
                namespace: namespace.into(),
                config: Some(config),
                client_name: "security-test".into(),
            },
            token,
        ))
        .await?
        .into_inner();
    Ok((r.session_id, r.effective_seed))
}

/// Lookup with a token.
pub async fn lookup_as(
    client: &mut CacheServiceClient<Channel>,
    token: &str,
    session: &str,
    hashes: &[u64],
) -> std::result::Result<LookupResponse, tonic::Status> {
    Ok(client
        .lookup(authed(
            LookupRequest {
                session_id: session.into(),
                hashes: hashes.to_vec(),
            },
            token,
        ))
        .await?
        .into_inner())
}

/// Put a chain with a token.
pub async fn put_as(
    client: &mut CacheServiceClient<Channel>,
    token: &str,
    session: &str,
    hashes: &[u64],
    len: usize,
) -> std::result::Result<PutResponse, tonic::Status> {
    let messages = kvtier_integration_tests::put_messages(session, hashes, len);
    Ok(client
        .put(authed(tokio_stream::iter(messages), token))
        .await?
        .into_inner())
}

/// Get with a token, collecting the stream.
pub async fn get_as(
    client: &mut CacheServiceClient<Channel>,
    token: &str,
    session: &str,
    hashes: &[u64],
) -> std::result::Result<Vec<GetResponse>, tonic::Status> {
    let mut stream = client
        .get(authed(
            GetRequest {
                session_id: session.into(),
                hashes: hashes.to_vec(),
                stop_at_first_miss: false,
                agent_id: String::new(),
            },
            token,
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.message().await? {
        out.push(item);
    }
    Ok(out)
}

/// Sequence hashes of the same synthetic prompt as
/// [`kvtier_integration_tests::prompt_hashes`], under an explicit effective seed.
pub fn prompt_hashes_seeded(prompt: u32, n: usize, block_tokens: usize, seed: u64) -> Vec<u64> {
    let tokens: Vec<u32> = (0..(n * block_tokens) as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(prompt))
        .collect();
    kvtier_proto::hashing::BlockHasher::new(block_tokens, seed).sequence_hashes(&tokens)
}

/// A token file line for `principal` holding `token` (hashed).
pub fn token_line(principal: &str, token: &str, rest: &str) -> String {
    format!(
        "{principal} {} {rest}\n",
        kvtier_security::token_digest_line(token)
    )
}
