//! Data-plane client: HELLO with a gRPC session id, then pipelined PUTs and
//! GETs (see [`super::wire`] for the frames).
//!
//! Self-contained (`std`, `tokio`, `bytes` and the sibling `wire` module), so
//! that a program without a dependency on this crate can include both files
//! by path (the benchmark and the integration tests do).
//!
//! Payloads are written from the caller's `Bytes` (header and payload in one
//! vectored write, no copy) and read into one exactly sized buffer each.

use std::io::IoSlice;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::wire::{
    encode_hello, RequestHeader, ResponseHeader, Status, HEADER_LEN, MAX_MESSAGE_LEN,
};

/// Most hashes the client puts in one GET frame (the server's limit).
pub const MAX_HASHES_PER_GET: usize = 65_536;

/// A data-plane failure.
#[derive(Debug)]
pub enum DataError {
    /// The connection failed.
    Io(std::io::Error),
    /// The server answered with an error status.
    Refused {
        /// The status.
        status: Status,
        /// Block the answer is about (0 for HELLO).
        hash: u64,
        /// The server's message.
        message: String,
        /// BUSY: when to retry, in milliseconds.
        retry_after_ms: u32,
    },
    /// The server sent something this client does not understand.
    Protocol(String),
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "data plane: {e}"),
            Self::Refused {
                status,
                hash,
                message,
                retry_after_ms,
            } => {
                write!(
                    f,
                    "data plane {} for {hash:#018x}: {message}",
                    status.name()
                )?;
                if *retry_after_ms > 0 {
                    write!(f, " (retry after {retry_after_ms} ms)")?;
                }
                Ok(())
            }
            Self::Protocol(m) => write!(f, "data plane protocol: {m}"),
        }
    }
}

impl std::error::Error for DataError {}

impl From<std::io::Error> for DataError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// A PUT's acknowledgement: the block is stored in `tier` (see [`super::wire`]
/// for what that guarantees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutAck {
    /// The block.
    pub hash: u64,
    /// Tier it is in (kvtier.v1.Tier numbering: 1 GPU, 2 host, 3 disk).
    pub tier: u8,
    /// It was there already; nothing was written.
    pub already_present: bool,
}

/// One block of a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReply {
    /// The block asked for.
    pub hash: u64,
    /// Tier it was served from (0 on a miss).
    pub tier: u8,
    /// Parent hash, when the server knows it.
    pub parent: Option<u64>,
    /// The payload; `None` on a miss.
    pub payload: Option<Bytes>,
}

/// Reads exactly `len` bytes into one buffer of exactly that size (no
/// zeroing, no intermediate buffer).
pub async fn read_exact_bytes<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    len: usize,
) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        let mut limited = (&mut buf).limit(want);
        if r.read_buf(&mut limited).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

/// Writes `head` then `body` with vectored writes (no copy into one buffer).
pub async fn write_two<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let (mut h, mut b) = (head, body);
    while !h.is_empty() || !b.is_empty() {
        let n = if h.is_empty() {
            w.write(b).await?
        } else {
            w.write_vectored(&[IoSlice::new(h), IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(h.len());
        h = &h[from_head..];
        b = &b[n - from_head..];
    }
    Ok(())
}

/// Reads one response header and, for an error status, its message.
/// Returns the header, its status, and the error (for error statuses).
async fn read_response<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<(ResponseHeader, Status, Option<DataError>), DataError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let h = ResponseHeader::decode(&head);
    let status = Status::from_u8(h.status)
        .ok_or_else(|| DataError::Protocol(format!("unknown status byte {}", h.status)))?;
    if !status.is_error() {
        return Ok((h, status, None));
    }
    if h.len > MAX_MESSAGE_LEN {
        return Err(DataError::Protocol(format!(
            "error message of {} bytes",
            h.len
        )));
    }
    let mut msg = vec![0u8; h.len as usize];
    r.read_exact(&mut msg).await?;
    let err = DataError::Refused {
        status,
        hash: h.hash,
        message: String::from_utf8_lossy(&msg).into_owned(),
        retry_after_ms: h.retry_after_ms,
    };
    Ok((h, status, Some(err)))
}

/// A data-plane connection that has passed HELLO.
#[derive(Debug)]
pub struct DataClient<S> {
    stream: S,
    block_bytes: u64,
}

impl DataClient<tokio::net::TcpStream> {
    /// Connects over TCP and presents `session` (from gRPC Handshake), the
    /// bearer `token` when the server has authentication on (else ""), and
    /// an optional `agent` id for hit attribution.
    pub async fn connect(
        addr: std::net::SocketAddr,
        session: &str,
        token: &str,
        agent: &str,
    ) -> Result<Self, DataError> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Self::hello(stream, session, token, agent).await
    }
}

#[cfg(unix)]
impl DataClient<tokio::net::UnixStream> {
    /// Like [`DataClient::connect`], over a Unix-domain socket.
    pub async fn connect_unix(
        path: &std::path::Path,
        session: &str,
        token: &str,
        agent: &str,
    ) -> Result<Self, DataError> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        Self::hello(stream, session, token, agent).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> DataClient<S> {
    /// Sends HELLO on `stream` and waits for the server to accept it.
    pub async fn hello(
        mut stream: S,
        session: &str,
        token: &str,
        agent: &str,
    ) -> Result<Self, DataError> {
        stream
            .write_all(&encode_hello(session, token, agent))
            .await?;
        let (h, _, err) = read_response(&mut stream).await?;
        if let Some(err) = err {
            return Err(err);
        }
        Ok(Self {
            stream,
            block_bytes: h.hash,
        })
    }

    /// The namespace's block size, as the server reported it in HELLO.
    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// Stores one block.
    pub async fn put(
        &mut self,
        hash: u64,
        parent: Option<u64>,
        payload: &Bytes,
    ) -> Result<PutAck, DataError> {
        let mut out = None;
        self.put_many_each(&[(hash, parent, payload.clone())], |r| out = Some(r))
            .await?;
        out.unwrap_or_else(|| Err(DataError::Protocol("no answer to PUT".into())))
    }

    /// Pipelines PUTs of `(hash, parent, payload)` (frames are written while
    /// acknowledgements are read) and returns every acknowledgement in order;
    /// the first refusal, when any, is returned as the error once all
    /// answers are in (the connection stays usable).
    pub async fn put_many(
        &mut self,
        blocks: &[(u64, Option<u64>, Bytes)],
    ) -> Result<Vec<PutAck>, DataError> {
        let mut acks = Vec::with_capacity(blocks.len());
        let mut first_err = None;
        self.put_many_each(blocks, |r| match r {
            Ok(ack) => acks.push(ack),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        })
        .await?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(acks),
        }
    }

    /// Like [`DataClient::put_many`], handing each block's outcome to
    /// `on_answer` as it arrives; `Err` only when the connection fails.
    pub async fn put_many_each(
        &mut self,
        blocks: &[(u64, Option<u64>, Bytes)],
        mut on_answer: impl FnMut(Result<PutAck, DataError>),
    ) -> Result<(), DataError> {
        let (mut rd, mut wr) = tokio::io::split(&mut self.stream);
        let writer = async {
            for (hash, parent, payload) in blocks {
                let head = RequestHeader::put(*hash, *parent, payload.len() as u64).encode();
                write_two(&mut wr, &head, payload).await?;
            }
            wr.flush().await?;
            Ok::<(), DataError>(())
        };
        let reader = async {
            for _ in 0..blocks.len() {
                let (h, status, err) = read_response(&mut rd).await?;
                on_answer(match (status, err) {
                    (_, Some(e)) => Err(e),
                    (Status::Ok | Status::Exists, None) => Ok(PutAck {
                        hash: h.hash,
                        tier: h.tier,
                        already_present: status == Status::Exists,
                    }),
                    (other, None) => {
                        return Err(DataError::Protocol(format!(
                            "{} is not an answer to PUT",
                            other.name()
                        )))
                    }
                });
            }
            Ok::<(), DataError>(())
        };
        let (w, r) = tokio::join!(writer, reader);
        // A failed read explains more than the write it broke.
        r.and(w)
    }

    /// Reads one block.
    pub async fn get(&mut self, hash: u64) -> Result<GetReply, DataError> {
        let mut replies = self.get_many(&[hash], false).await?;
        replies
            .pop()
            .ok_or_else(|| DataError::Protocol("no answer to GET".into()))
    }

    /// Reads `hashes` (one GET frame per 65,536), one reply per hash in
    /// order. With `stop_at_first_miss`, every hash after the first miss is a
    /// miss without being read.
    pub async fn get_many(
        &mut self,
        hashes: &[u64],
        stop_at_first_miss: bool,
    ) -> Result<Vec<GetReply>, DataError> {
        let mut out = Vec::with_capacity(hashes.len());
        self.get_many_each(hashes, stop_at_first_miss, |r| out.push(r))
            .await?;
        Ok(out)
    }

    /// Like [`DataClient::get_many`], handing each reply to `on_reply` as it
    /// arrives (so that a caller that consumes payloads one by one never
    /// holds them all).
    pub async fn get_many_each(
        &mut self,
        hashes: &[u64],
        stop_at_first_miss: bool,
        mut on_reply: impl FnMut(GetReply),
    ) -> Result<(), DataError> {
        for chunk in hashes.chunks(MAX_HASHES_PER_GET) {
            let mut frame = Vec::with_capacity(HEADER_LEN + chunk.len() * 8);
            frame.extend_from_slice(
                &RequestHeader::get_many(chunk.len() as u32, stop_at_first_miss).encode(),
            );
            for h in chunk {
                frame.extend_from_slice(&h.to_le_bytes());
            }
            self.stream.write_all(&frame).await?;
            for _ in chunk {
                let (h, status, err) = read_response(&mut self.stream).await?;
                if let Some(err) = err {
                    return Err(err);
                }
                let payload = match status {
                    Status::Ok if h.len == self.block_bytes => {
                        Some(read_exact_bytes(&mut self.stream, h.len as usize).await?)
                    }
                    Status::Ok => {
                        return Err(DataError::Protocol(format!(
                            "a hit of {} bytes in a namespace of {}-byte blocks",
                            h.len, self.block_bytes
                        )))
                    }
                    Status::Miss => None,
                    other => {
                        return Err(DataError::Protocol(format!(
                            "{} is not an answer to GET",
                            other.name()
                        )))
                    }
                };
                on_reply(GetReply {
                    hash: h.hash,
                    tier: h.tier,
                    parent: h.parent(),
                    payload,
                });
            }
        }
        Ok(())
    }

    /// The underlying stream (to shut it down, or to send raw frames in tests).
    pub fn into_inner(self) -> S {
        self.stream
    }
}
