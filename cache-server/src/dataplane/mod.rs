//! The binary data plane: PUT and GET of block payloads over a small framed
//! protocol on TCP or a Unix socket, beside gRPC (which stays the control
//! plane: Handshake, Lookup, agents, events, and Put/Get for clients that
//! prefer it).
//!
//! Why: through gRPC every payload byte is copied three times in user space
//! (protobuf encode, HTTP/2 reassembly, the host tier's own copy). Here the
//! server reads each PUT payload with `read` calls straight into a slot of
//! the host tier's pre-faulted arena
//! ([`crate::store::TieredStore::receive_buffer`]), which the host tier then
//! keeps as it is ([`crate::store::TieredStore::put_owned`]); a GET writes
//! the header and the slot's `Bytes` with one vectored write. The only
//! copies left are the kernel's.
//!
//! # Protocol (version 1)
//!
//! Frames are defined in [`wire`] (and `proto/data_plane.md`). A connection
//! opens with HELLO: the session id from gRPC `Handshake`, the bearer token
//! (required when the server has tokens: the data plane never bypasses
//! authentication) and an optional agent id. The session is checked exactly
//! as a gRPC call's is (it must exist, and belong to the token's principal;
//! read access for GET, write access for PUT, re-checked against the token
//! table at HELLO). Then the client pipelines PUT and GET frames; answers come
//! back in request order.
//!
//! Validation is the gRPC path's: a PUT payload must be exactly the
//! namespace's `block_bytes` (else `INVALID` with the reason, and the
//! connection goes on), the server's request slots and the per-client
//! concurrency and byte-rate limits apply per frame (`BUSY` with
//! `retry_after_ms`, the RESOURCE_EXHAUSTED of gRPC; a PUT takes its client's
//! slot before its payload and the server's only once the payload is
//! complete), a disk block that fails
//! its checksum is a `MISS`, hits and misses count in the same metrics as
//! gRPC Get (`op="get"`), and stores publish the same block events. A
//! malformed frame gets a `PROTOCOL` answer that says what was wrong, then
//! the connection is closed.
//!
//! Deadlines ([`Deadlines`]): a connection silent between frames for longer
//! than the idle timeout is closed; once a frame's first byte has arrived,
//! the rest of it (header, payload, hash list) must arrive within the frame
//! deadline, else the connection is closed (with a `PROTOCOL` answer when it
//! can still be written). A client that stalls mid-frame therefore holds no
//! server-wide slot at all, and its own client slot only until the deadline.
//!
//! Acknowledgement: `OK`/`EXISTS` for a PUT is sent once the block is stored
//! in the tier the answer names; `tier` = disk means it is in RocksDB (its
//! write-ahead log) and survives `kill -9`.
//!
//! # TLS
//!
//! The data plane is plaintext. With TLS on gRPC, an explicitly configured
//! `--data-listen` is refused at start-up (the default then means "off"),
//! rather than sending over plaintext what gRPC encrypts.

/// The frames and the client live in `kvtier-proto` (agents and tools use
/// them without linking the server); re-exported here.
pub use kvtier_proto::dataplane::{client, wire};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use kvtier_security::Client;

use crate::block::{Block, BlockKey};
use crate::metrics as m;
use crate::namespace::Namespace;
use crate::service::session::Need;
use crate::service::{store_status, wire_tier, ServiceState, MAX_HASHES_PER_REQUEST};
use client::{read_exact_bytes, write_two};
use wire::{
    decode_hello_head, Op, RequestHeader, ResponseHeader, Status, FLAG_PARENT,
    FLAG_STOP_AT_FIRST_MISS, HEADER_LEN, HELLO_LEN, MAX_HELLO_FIELD, VERSION,
};

/// How long a new connection may take to send HELLO.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connections get to finish their current frame at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the answer to a connection closed by a deadline may take to
/// write (the client may not be reading either).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Read deadlines of a connection after HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Longest silence between frames; then the connection is closed.
    pub idle: Duration,
    /// Once a frame's first byte has arrived, how long the rest of it
    /// (header, PUT payload, GET hash list) may take; then the connection is
    /// closed.
    pub frame: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            idle: Duration::from_millis(crate::config::DEFAULT_DATA_IDLE_TIMEOUT_MS),
            frame: Duration::from_millis(crate::config::DEFAULT_FRAME_TIMEOUT_MS),
        }
    }
}

/// Runs `read` until `deadline`; past it, a `TimedOut` error.
async fn by<T>(
    deadline: tokio::time::Instant,
    read: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout_at(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "frame deadline passed",
        )),
    }
}

/// Closes a connection whose deadline passed, telling the client why when
/// that can be written within [`CLOSE_GRACE`].
async fn close_timed_out<W: AsyncWrite + Unpin>(w: &mut W, message: &str) {
    metrics::counter!(m::REQUESTS_REJECTED, "method" => "data_timeout").increment(1);
    tracing::debug!(message, "data plane: deadline passed; closing");
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = send_error(w, Status::Protocol, 0, message, 0).await;
        let _ = w.shutdown().await;
    })
    .await;
}

/// A bound data-plane listener.
#[derive(Debug)]
pub enum DataListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix-domain socket (and its path, removed at shutdown).
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Where the data plane listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataAddr {
    /// TCP.
    Tcp(SocketAddr),
    /// Unix-domain socket.
    Unix(PathBuf),
}

impl std::fmt::Display for DataAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl DataListener {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<DataAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().map(DataAddr::Tcp),
            #[cfg(unix)]
            Self::Unix(_, p) => Ok(DataAddr::Unix(p.clone())),
        }
    }

    /// Binds a Unix-domain socket at `path`, replacing a stale socket file.
    #[cfg(unix)]
    pub fn bind_unix(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)?;
            }
        }
        Ok(Self::Unix(
            tokio::net::UnixListener::bind(path)?,
            path.to_path_buf(),
        ))
    }
}

/// Serves the data plane on `listener` until `stop` turns true; then stops
/// accepting and gives open connections [`DRAIN_TIMEOUT`] to finish the
/// frame they are in. Connections follow `deadlines`.
pub async fn serve(
    listener: DataListener,
    state: Arc<ServiceState>,
    deadlines: Deadlines,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => {}
            accepted = accept(&listener) => match accepted {
                Ok(Accepted::Tcp(stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection_with(stream, Some(remote), Arc::clone(&state), deadlines, conn_stop.clone()));
                }
                #[cfg(unix)]
                Ok(Accepted::Unix(stream)) => {
                    conns.spawn(serve_connection_with(stream, None, Arc::clone(&state), deadlines, conn_stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "data plane: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
    #[cfg(unix)]
    if let DataListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &DataListener) -> std::io::Result<Accepted> {
    match listener {
        DataListener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        #[cfg(unix)]
        DataListener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// A connection that passed HELLO.
struct Conn {
    client: Client,
    namespace: Namespace,
    agent: String,
    can_read: bool,
    can_write: bool,
}

/// What to do after a frame.
enum Flow {
    Continue,
    Close,
}

/// Sends an error answer (status, message, retry hint).
async fn send_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: Status,
    hash: u64,
    message: &str,
    retry_after_ms: u32,
) -> std::io::Result<()> {
    let mut h = ResponseHeader::new(status, hash);
    h.retry_after_ms = retry_after_ms;
    h.len = message.len() as u64;
    write_two(w, &h.encode(), message.as_bytes()).await
}

/// Sends a PROTOCOL error and closes.
async fn protocol_error<W: AsyncWrite + Unpin>(w: &mut W, message: &str) -> Flow {
    metrics::counter!(m::REQUESTS_REJECTED, "method" => "data_protocol").increment(1);
    tracing::debug!(message, "data plane: protocol error");
    let _ = send_error(w, Status::Protocol, 0, message, 0).await;
    let _ = w.shutdown().await;
    Flow::Close
}

/// Maps a gRPC status (from the shared admission, session and store code) to
/// a data-plane status and retry hint.
fn from_grpc(status: &tonic::Status) -> (Status, u32) {
    use tonic::Code;
    let retry = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    match status.code() {
        Code::ResourceExhausted => (Status::Busy, retry.unwrap_or(1000)),
        Code::InvalidArgument => (Status::Invalid, 0),
        Code::PermissionDenied => (Status::Denied, 0),
        Code::FailedPrecondition => (Status::NoSession, 0),
        Code::Unauthenticated => (Status::Unauthenticated, 0),
        _ => (Status::Internal, 0),
    }
}

/// Serves one accepted connection: HELLO, then pipelined PUT and GET frames,
/// until the client closes it, a frame is malformed (`PROTOCOL`, then close)
/// or `stop` turns true (or its sender is dropped). [`serve`] runs it for
/// every connection it accepts; the `data_plane` fuzz target drives it over
/// in-memory streams. Default [`Deadlines`].
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    remote: Option<SocketAddr>,
    state: Arc<ServiceState>,
    stop: watch::Receiver<bool>,
) {
    serve_connection_with(s, remote, state, Deadlines::default(), stop).await;
}

/// [`serve_connection`] with `deadlines`: a connection silent between frames
/// for longer than `deadlines.idle` is closed, and so is one whose frame has
/// begun but not completed within `deadlines.frame`.
pub async fn serve_connection_with<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    remote: Option<SocketAddr>,
    state: Arc<ServiceState>,
    deadlines: Deadlines,
    mut stop: watch::Receiver<bool>,
) {
    let conn = match tokio::time::timeout(HELLO_TIMEOUT, hello(&mut s, remote, &state)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(Some((status, message)))) => {
            tracing::info!(?remote, status = status.name(), %message, "data plane: HELLO refused");
            let _ = send_error(&mut s, status, 0, &message, 0).await;
            let _ = s.shutdown().await;
            return;
        }
        Ok(Err(None)) => return,
        Err(_) => {
            protocol_error(&mut s, "no HELLO within 10 s").await;
            return;
        }
    };
    if let Err(e) = s
        .write_all(&{
            let mut h = ResponseHeader::new(Status::Ok, conn.namespace.config.block_bytes);
            h.tier = 0;
            h.encode()
        })
        .await
    {
        tracing::debug!(error = %e, "data plane: connection lost after HELLO");
        return;
    }
    let mut scratch = Vec::new();
    loop {
        let mut head = [0u8; HEADER_LEN];
        // Between frames: wait for a frame's first bytes, at most the idle
        // timeout. (`read` is cancel-safe; nothing is lost to `stop`.)
        let first = tokio::select! {
            read = tokio::time::timeout(deadlines.idle, s.read(&mut head)) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => return, // closed by the client (or broken)
                Ok(Ok(n)) => Some(n),
                Err(_) => None,
            },
            () = stopped(&mut stop) => {
                let _ = s.shutdown().await;
                return;
            }
        };
        let Some(first) = first else {
            close_timed_out(
                &mut s,
                &format!(
                    "idle for {} ms between frames (--data-idle-timeout-ms); closing, reconnect to go on",
                    deadlines.idle.as_millis()
                ),
            )
            .await;
            return;
        };
        // The frame has begun: the rest of it (header and body) by the deadline.
        let deadline = tokio::time::Instant::now() + deadlines.frame;
        let frame_late = || {
            format!(
                "frame incomplete {} ms after it began (--frame-timeout-ms); closing",
                deadlines.frame.as_millis()
            )
        };
        match by(deadline, s.read_exact(&mut head[first..])).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                close_timed_out(&mut s, &frame_late()).await;
                return;
            }
            Err(_) => return,
        }
        let head = match RequestHeader::decode(&head) {
            Ok(h) => h,
            Err(message) => {
                protocol_error(&mut s, &message).await;
                return;
            }
        };
        let flow = if head.op == Op::Put as u8 {
            put(&mut s, head, &conn, &state, &mut scratch, deadline).await
        } else if head.op == Op::Get as u8 {
            get(&mut s, head, &conn, &state, deadline).await
        } else {
            Ok(protocol_error(
                &mut s,
                &format!("unknown op {} (1 = PUT, 2 = GET)", head.op),
            )
            .await)
        };
        match flow {
            Ok(Flow::Continue) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                close_timed_out(&mut s, &frame_late()).await;
                return;
            }
            Ok(Flow::Close) | Err(_) => return,
        }
    }
}

/// Reads and checks HELLO. `Err(Some(..))`: refuse with this answer;
/// `Err(None)`: the connection broke.
async fn hello<S: AsyncRead + Unpin>(
    s: &mut S,
    remote: Option<SocketAddr>,
    state: &ServiceState,
) -> Result<Conn, Option<(Status, String)>> {
    let mut head = [0u8; HELLO_LEN];
    s.read_exact(&mut head).await.map_err(|_| None)?;
    let head = decode_hello_head(&head).map_err(|m| Some((Status::Protocol, m)))?;
    if head.version != VERSION {
        return Err(Some((
            Status::Protocol,
            format!(
                "data-plane version {} is not supported; this server speaks version {VERSION}",
                head.version
            ),
        )));
    }
    let mut fields = Vec::with_capacity(3);
    for (len, what) in head
        .lens
        .into_iter()
        .zip(["session id", "token", "agent id"])
    {
        if len > MAX_HELLO_FIELD {
            return Err(Some((
                Status::Protocol,
                format!("HELLO {what} of {len} bytes; the limit is {MAX_HELLO_FIELD}"),
            )));
        }
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await.map_err(|_| None)?;
        fields.push(
            String::from_utf8(buf)
                .map_err(|_| Some((Status::Protocol, format!("HELLO {what} is not UTF-8"))))?,
        );
    }
    let agent = fields.pop().unwrap_or_default();
    let token = fields.pop().unwrap_or_default();
    let session = fields.pop().unwrap_or_default();
    let client = if state.auth.enabled() {
        if token.is_empty() {
            return Err(Some((
                Status::Unauthenticated,
                "this server requires a bearer token: put the token you use for gRPC in the \
                 HELLO frame"
                    .into(),
            )));
        }
        let mut md = MetadataMap::new();
        let value = format!("Bearer {token}").parse().map_err(|_| {
            Some((
                Status::Unauthenticated,
                "the token is not printable ASCII".to_string(),
            ))
        })?;
        md.insert("authorization", value);
        match state.auth.authenticate(&md) {
            Ok(Some(principal)) => Client {
                id: format!("principal:{}", principal.name).into(),
                principal: Some(principal),
            },
            Ok(None) => Client::anonymous(remote),
            Err(st) => {
                return Err(Some((Status::Unauthenticated, st.message().to_string())));
            }
        }
    } else {
        Client::anonymous(remote)
    };
    let empty = MetadataMap::new();
    let read = state
        .sessions
        .resolve(&session, &empty, &client, Need::Read);
    let write = state
        .sessions
        .resolve(&session, &empty, &client, Need::Write);
    let (can_read, can_write) = (read.is_ok(), write.is_ok());
    let namespace = match (read, write) {
        (Ok(ns), _) | (_, Ok(ns)) => ns,
        (Err(st), Err(_)) => {
            let (status, _) = from_grpc(&st);
            return Err(Some((status, st.message().to_string())));
        }
    };
    tracing::debug!(?remote, namespace = %namespace.name, can_read, can_write, "data plane: HELLO accepted");
    Ok(Conn {
        client,
        namespace,
        agent,
        can_read,
        can_write,
    })
}

/// Reads and drops `len` bytes (a refused PUT's payload), keeping the stream
/// in step.
async fn drain<S: AsyncRead + Unpin>(
    s: &mut S,
    mut len: u64,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    scratch.resize(256 << 10, 0);
    while len > 0 {
        let n = (len as usize).min(scratch.len());
        s.read_exact(&mut scratch[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

fn observe(method: &'static str, started: Instant, status: Status) {
    metrics::histogram!(m::REQUEST_DURATION, "method" => method, "code" => status.name().to_ascii_lowercase())
        .record(started.elapsed().as_secs_f64());
}

/// A PUT refused before its payload was read.
struct Refusal {
    len: u64,
    hash: u64,
    started: Instant,
    max_len: u64,
    deadline: tokio::time::Instant,
}

impl Refusal {
    /// Answers with `status`; drains the payload to keep the connection when
    /// that is cheap enough (at most a block plus slack), else closes.
    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        s: &mut S,
        scratch: &mut Vec<u8>,
        status: Status,
        message: String,
        retry: u32,
    ) -> std::io::Result<Flow> {
        observe("data_put", self.started, status);
        if self.len > self.max_len {
            let _ = send_error(s, status, self.hash, &message, retry).await;
            let _ = s.shutdown().await;
            return Ok(Flow::Close);
        }
        by(self.deadline, drain(s, self.len, scratch)).await?;
        send_error(s, status, self.hash, &message, retry).await?;
        Ok(Flow::Continue)
    }
}

/// A PUT: validation, the client's slot and byte-rate charge, the payload
/// (by `deadline`), then the server's slot and the store. The server-wide
/// slot is taken only once the payload is complete, so a client that stalls
/// mid-payload holds none.
async fn put<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    head: RequestHeader,
    conn: &Conn,
    state: &ServiceState,
    scratch: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> std::io::Result<Flow> {
    let started = Instant::now();
    let ns = &conn.namespace;
    if head.count != 0 || head.flags & !FLAG_PARENT != 0 {
        return Ok(protocol_error(
            s,
            &format!(
                "PUT with count {} and flags {:#04x}: count must be 0, only flag bit 0 (parent) is defined",
                head.count, head.flags
            ),
        )
        .await);
    }
    let len = head.len;
    let refusal = Refusal {
        len,
        hash: head.hash,
        started,
        max_len: state.max_message_bytes,
        deadline,
    };
    if len != ns.config.block_bytes {
        return refusal
            .send(
                s,
                scratch,
                Status::Invalid,
                format!(
                    "block {:#018x} has {len} payload bytes but namespace '{}' is configured with \
                 block_bytes={} (kv_layout {:?}); send whole blocks of exactly that size",
                    head.hash, ns.name, ns.config.block_bytes, ns.config.kv_layout
                ),
                0,
            )
            .await;
    }
    if !conn.can_write {
        return refusal
            .send(
                s,
                scratch,
                Status::Denied,
                format!(
                    "{} (PUT needs write access)",
                    crate::namespace::forbidden_message(&ns.name)
                ),
                0,
            )
            .await;
    }
    // The client's slot before the payload (it bounds what one client can
    // have buffered); refused at once when the client is at its limit.
    let _client_slot = match state.client_slot("data_put", &conn.client) {
        Ok(p) => p,
        Err(st) => {
            let (status, retry) = from_grpc(&st);
            return refusal
                .send(s, scratch, status, st.message().to_string(), retry)
                .await;
        }
    };
    if let Err(t) = state.limits.charge(&conn.client.id, len) {
        metrics::counter!(m::REQUESTS_REJECTED, "method" => "data_put").increment(1);
        let retry = t.retry_after.as_millis().clamp(1, u32::MAX as u128) as u32;
        return refusal
            .send(s, scratch, Status::Busy, t.to_string(), retry)
            .await;
    }
    let key = BlockKey::new(ns.id, head.hash);
    // Straight into a slot of the host tier's arena (making room there, as
    // the put would, when it is full); else into memory of our own.
    let slot = match state.store.try_receive_buffer(len) {
        Some(slot) => Some(slot),
        None => tokio::task::block_in_place(|| state.store.receive_buffer(key, len)),
    };
    let payload = match slot {
        Some(mut slot) => {
            by(deadline, s.read_exact(&mut slot)).await?;
            slot.freeze()
        }
        None => by(deadline, read_exact_bytes(s, len as usize)).await?,
    };
    // The server's slot, now that the payload is here.
    let _server_slot = match state.server_slot("data_put").await {
        Ok(p) => p,
        Err(st) => {
            let (status, retry) = from_grpc(&st);
            observe("data_put", started, status);
            send_error(s, status, head.hash, st.message(), retry).await?;
            return Ok(Flow::Continue);
        }
    };
    let parent = (head.flags & FLAG_PARENT != 0).then_some(head.parent);
    let block = Block { parent, payload };
    let outcome = tokio::task::block_in_place(|| state.store.put_owned(key, block));
    match outcome {
        Ok(outcome) => {
            metrics::counter!(m::TRANSFER_BYTES, "direction" => "in").increment(len);
            let status = if outcome.already_present {
                Status::Exists
            } else {
                Status::Ok
            };
            let mut h = ResponseHeader::new(status, head.hash);
            h.tier = wire_tier(Some(outcome.tier)) as u8;
            s.write_all(&h.encode()).await?;
            observe("data_put", started, status);
            Ok(Flow::Continue)
        }
        Err(e) => {
            let st = store_status(e);
            let (status, retry) = from_grpc(&st);
            observe("data_put", started, status);
            send_error(s, status, head.hash, st.message(), retry).await?;
            Ok(Flow::Continue)
        }
    }
}

async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    head: RequestHeader,
    conn: &Conn,
    state: &ServiceState,
    deadline: tokio::time::Instant,
) -> std::io::Result<Flow> {
    let started = Instant::now();
    let ns = &conn.namespace;
    if head.len != 0 || head.flags & !FLAG_STOP_AT_FIRST_MISS != 0 {
        return Ok(protocol_error(
            s,
            &format!(
                "GET with len {} and flags {:#04x}: len must be 0, only flag bit 0 (stop at first miss) is defined",
                head.len, head.flags
            ),
        )
        .await);
    }
    let count = head.count as usize;
    if count > MAX_HASHES_PER_REQUEST {
        return Ok(protocol_error(
            s,
            &format!(
                "GET of {count} hashes in one frame; the limit is {MAX_HASHES_PER_REQUEST}, split the request"
            ),
        )
        .await);
    }
    let hashes: Vec<u64> = if count == 0 {
        vec![head.hash]
    } else {
        let raw = by(deadline, read_exact_bytes(s, count * 8)).await?;
        raw.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect()
    };
    if !conn.can_read {
        observe("data_get", started, Status::Denied);
        send_error(
            s,
            Status::Denied,
            hashes[0],
            &format!(
                "{} (GET needs read access)",
                crate::namespace::forbidden_message(&ns.name)
            ),
            0,
        )
        .await?;
        return Ok(Flow::Continue);
    }
    let _permit = match state.admit("data_get", &conn.client).await {
        Ok(p) => p,
        Err(st) => {
            let (status, retry) = from_grpc(&st);
            observe("data_get", started, status);
            send_error(s, status, hashes[0], st.message(), retry).await?;
            return Ok(Flow::Continue);
        }
    };
    let stop_at_first_miss = head.flags & FLAG_STOP_AT_FIRST_MISS != 0;
    let ns_name = ns.name.clone();
    let priority = state.agents.priority_class_of(ns.id, &conn.agent);
    let mut missed = false;
    let mut final_status = Status::Ok;
    for hash in hashes {
        metrics::counter!(m::BLOCK_LOOKUPS, "namespace" => ns_name.clone(), "priority" => priority, "op" => "get").increment(1);
        let result = if missed && stop_at_first_miss {
            Ok(None)
        } else {
            tokio::task::block_in_place(|| state.store.get(BlockKey::new(ns.id, hash)))
        };
        match result {
            Ok(Some(hit)) => {
                if let Err(t) = state.limits.charge(&conn.client.id, hit.block.len()) {
                    metrics::counter!(m::REQUESTS_REJECTED, "method" => "data_get").increment(1);
                    let retry = t.retry_after.as_millis().clamp(1, u32::MAX as u128) as u32;
                    final_status = Status::Busy;
                    send_error(s, Status::Busy, hash, &t.to_string(), retry).await?;
                    break;
                }
                metrics::counter!(m::BLOCK_HITS, "namespace" => ns_name.clone(), "priority" => priority, "op" => "get", "tier" => hit.tier.as_str()).increment(1);
                metrics::counter!(m::TRANSFER_BYTES, "direction" => "out")
                    .increment(hit.block.len());
                let mut h = ResponseHeader::new(Status::Ok, hash);
                h.tier = wire_tier(Some(hit.tier)) as u8;
                if let Some(p) = hit.block.parent {
                    h.flags = FLAG_PARENT;
                    h.parent = p;
                }
                h.len = hit.block.len();
                write_two(s, &h.encode(), &hit.block.payload).await?;
            }
            Ok(None) => {
                missed = true;
                metrics::counter!(m::BLOCK_MISSES, "namespace" => ns_name.clone(), "priority" => priority, "op" => "get").increment(1);
                s.write_all(&ResponseHeader::new(Status::Miss, hash).encode())
                    .await?;
            }
            Err(e) => {
                let st = store_status(e);
                let (status, retry) = from_grpc(&st);
                final_status = status;
                send_error(s, status, hash, st.message(), retry).await?;
                break;
            }
        }
    }
    observe("data_get", started, final_status);
    Ok(Flow::Continue)
}
