//! Frame format of the binary data plane, version 1 (see `proto/data_plane.md`).
//!
//! Self-contained (only `std`): the server, [`super::client`] and programs
//! that include this file by path (the benchmark, the integration tests)
//! share one definition of the bytes on the wire. All integers are
//! little-endian.
//!
//! ```text
//! HELLO (client → server, first frame of a connection)
//!   0  4  magic "KVTD"
//!   4  1  version (1)
//!   5  1  flags (0)
//!   6  2  session_len   (u16)  session id from gRPC Handshake
//!   8  2  token_len     (u16)  bearer token (0 when authentication is off)
//!  10  2  agent_len     (u16)  agent id for hit attribution (0: none)
//!  12  …  session id, token, agent id (UTF-8), back to back
//!
//! REQUEST header (client → server, 32 bytes), pipelined after HELLO
//!   0  1  op        1 = PUT, 2 = GET
//!   1  1  flags     PUT: bit 0 = `parent` is set; GET: bit 0 = stop at first miss
//!   2  2  reserved  (0)
//!   4  4  count     GET: number of u64 hashes that follow (0: the single `hash`)
//!   8  8  hash      PUT: the block; GET with count 0: the block
//!  16  8  parent    PUT: parent sequence hash (when flag bit 0)
//!  24  8  len       PUT: payload bytes that follow (exactly the namespace's block_bytes)
//!  32  …  PUT: `len` payload bytes; GET: `count` × u64 hashes
//!
//! RESPONSE header (server → client, 32 bytes), in request order
//!   0  1  status    see [`Status`]
//!   1  1  tier      0 none, 1 GPU, 2 host, 3 disk (as kvtier.v1.Tier)
//!   2  1  flags     bit 0 = `parent` is set
//!   3  1  version   (1)
//!   4  4  retry_after_ms (BUSY)
//!   8  8  hash      the block (HELLO reply: the namespace's block_bytes)
//!  16  8  parent
//!  24  8  len       bytes that follow: the payload (GET hit) or a UTF-8 message (errors)
//! ```
//!
//! A PUT gets exactly one response. A GET gets one block response (`OK` with
//! the payload, or `MISS`) per hash, in order, unless an error response
//! (status ≥ [`Status::Busy`]) comes first: that ends the request. `BUSY`,
//! `INVALID`, `DENIED` and `INTERNAL` leave the connection usable;
//! `NO_SESSION`, `UNAUTHENTICATED` and `PROTOCOL` are followed by close.
//!
//! Acknowledgement: a PUT's `OK`/`EXISTS` is sent after the block is stored in
//! the tier the response names; with `tier` = disk it is in RocksDB's
//! write-ahead log and survives `kill -9` (and power loss with `--sync-writes`).

/// First bytes of a HELLO frame.
pub const MAGIC: [u8; 4] = *b"KVTD";
/// Protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Fixed part of HELLO.
pub const HELLO_LEN: usize = 12;
/// Request and response header size.
pub const HEADER_LEN: usize = 32;
/// Longest session id, token or agent id in HELLO.
pub const MAX_HELLO_FIELD: usize = 4096;
/// Longest error message a response carries.
pub const MAX_MESSAGE_LEN: u64 = 64 << 10;

/// Request operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Store one block.
    Put = 1,
    /// Read one block or a list of blocks.
    Get = 2,
}

/// PUT flag: the `parent` field is set.
pub const FLAG_PARENT: u8 = 1;
/// GET flag: answer MISS for every hash after the first miss without reading.
pub const FLAG_STOP_AT_FIRST_MISS: u8 = 1;

/// Response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// PUT: stored now. GET: hit, the payload follows. HELLO: accepted.
    Ok = 0,
    /// PUT: already present (write-once); nothing written.
    Exists = 1,
    /// GET: not found (absent, skipped after the first miss, or failed its checksum).
    Miss = 2,
    /// Overloaded (server slots, client limits, full disk): not executed,
    /// retry after `retry_after_ms`. Connection stays usable.
    Busy = 3,
    /// Refused request (wrong payload size, too many hashes). Connection stays usable.
    Invalid = 4,
    /// The session's principal lacks the access this request needs.
    Denied = 5,
    /// HELLO: unknown or expired session; close follows.
    NoSession = 6,
    /// HELLO: missing, unknown or revoked bearer token; close follows.
    Unauthenticated = 7,
    /// Malformed frame or unsupported version; close follows.
    Protocol = 8,
    /// Storage failure. Connection stays usable.
    Internal = 9,
}

impl Status {
    /// Decodes a status byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Ok,
            1 => Self::Exists,
            2 => Self::Miss,
            3 => Self::Busy,
            4 => Self::Invalid,
            5 => Self::Denied,
            6 => Self::NoSession,
            7 => Self::Unauthenticated,
            8 => Self::Protocol,
            9 => Self::Internal,
            _ => return None,
        })
    }

    /// Whether this status ends a request (an error, not a block answer).
    pub fn is_error(self) -> bool {
        self as u8 >= Self::Busy as u8
    }

    /// Upper-case name, as in the docs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Exists => "EXISTS",
            Self::Miss => "MISS",
            Self::Busy => "BUSY",
            Self::Invalid => "INVALID",
            Self::Denied => "DENIED",
            Self::NoSession => "NO_SESSION",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Protocol => "PROTOCOL",
            Self::Internal => "INTERNAL",
        }
    }
}

/// Encodes HELLO.
pub fn encode_hello(session: &str, token: &str, agent: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(HELLO_LEN + session.len() + token.len() + agent.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0);
    for field in [session, token, agent] {
        out.extend_from_slice(&(field.len().min(u16::MAX as usize) as u16).to_le_bytes());
    }
    for field in [session, token, agent] {
        out.extend_from_slice(&field.as_bytes()[..field.len().min(u16::MAX as usize)]);
    }
    out
}

/// The fixed part of HELLO, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloHead {
    /// Version the client speaks.
    pub version: u8,
    /// Lengths of session id, token, agent id.
    pub lens: [usize; 3],
}

/// Decodes the fixed part of HELLO; `Err` with a message for a bad magic.
pub fn decode_hello_head(b: &[u8; HELLO_LEN]) -> Result<HelloHead, String> {
    if b[..4] != MAGIC {
        return Err(format!(
            "not a kvtier data-plane connection: the first 4 bytes are {:02x?}, expected \"KVTD\" \
             (is this a gRPC client pointed at --data-listen?)",
            &b[..4]
        ));
    }
    let len = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
    Ok(HelloHead {
        version: b[4],
        lens: [len(6), len(8), len(10)],
    })
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestHeader {
    /// Operation byte (see [`Op`]).
    pub op: u8,
    /// Flags.
    pub flags: u8,
    /// GET: hashes that follow.
    pub count: u32,
    /// Block hash.
    pub hash: u64,
    /// Parent hash (PUT).
    pub parent: u64,
    /// Payload bytes that follow (PUT).
    pub len: u64,
}

impl RequestHeader {
    /// A PUT of `len` bytes.
    pub fn put(hash: u64, parent: Option<u64>, len: u64) -> Self {
        Self {
            op: Op::Put as u8,
            flags: if parent.is_some() { FLAG_PARENT } else { 0 },
            count: 0,
            hash,
            parent: parent.unwrap_or(0),
            len,
        }
    }

    /// A GET of `count` hashes that follow the header.
    pub fn get_many(count: u32, stop_at_first_miss: bool) -> Self {
        Self {
            op: Op::Get as u8,
            flags: if stop_at_first_miss {
                FLAG_STOP_AT_FIRST_MISS
            } else {
                0
            },
            count,
            ..Self::default()
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.op;
        b[1] = self.flags;
        b[4..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..16].copy_from_slice(&self.hash.to_le_bytes());
        b[16..24].copy_from_slice(&self.parent.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes a header; `Err` with a message when the reserved bytes are set.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, String> {
        if b[2] != 0 || b[3] != 0 {
            return Err(format!(
                "reserved bytes 2..4 of a request header must be 0, got {:02x} {:02x}",
                b[2], b[3]
            ));
        }
        Ok(Self {
            op: b[0],
            flags: b[1],
            count: u32::from_le_bytes(b[4..8].try_into().unwrap_or_default()),
            hash: le_u64(&b[8..16]),
            parent: le_u64(&b[16..24]),
            len: le_u64(&b[24..32]),
        })
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Status byte (see [`Status`]).
    pub status: u8,
    /// Tier (kvtier.v1.Tier numbering).
    pub tier: u8,
    /// Flags.
    pub flags: u8,
    /// Protocol version of the server.
    pub version: u8,
    /// BUSY: when to retry.
    pub retry_after_ms: u32,
    /// Block hash.
    pub hash: u64,
    /// Parent hash (when flag bit 0).
    pub parent: u64,
    /// Bytes that follow.
    pub len: u64,
}

impl ResponseHeader {
    /// A response with `status` about `hash`, nothing following.
    pub fn new(status: Status, hash: u64) -> Self {
        Self {
            status: status as u8,
            tier: 0,
            flags: 0,
            version: VERSION,
            retry_after_ms: 0,
            hash,
            parent: 0,
            len: 0,
        }
    }

    /// The parent, when set.
    pub fn parent(&self) -> Option<u64> {
        (self.flags & FLAG_PARENT != 0).then_some(self.parent)
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.status;
        b[1] = self.tier;
        b[2] = self.flags;
        b[3] = self.version;
        b[4..8].copy_from_slice(&self.retry_after_ms.to_le_bytes());
        b[8..16].copy_from_slice(&self.hash.to_le_bytes());
        b[16..24].copy_from_slice(&self.parent.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            status: b[0],
            tier: b[1],
            flags: b[2],
            version: b[3],
            retry_after_ms: u32::from_le_bytes(b[4..8].try_into().unwrap_or_default()),
            hash: le_u64(&b[8..16]),
            parent: le_u64(&b[16..24]),
            len: le_u64(&b[24..32]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let r = RequestHeader::put(7, Some(3), 2 << 20);
        assert_eq!(RequestHeader::decode(&r.encode()), Ok(r));
        let mut s = ResponseHeader::new(Status::Busy, 9);
        s.retry_after_ms = 100;
        s.len = 12;
        assert_eq!(ResponseHeader::decode(&s.encode()), s);
        let hello = encode_hello("abc", "", "agent-1");
        let head: [u8; HELLO_LEN] = hello[..HELLO_LEN].try_into().expect("len");
        let head = decode_hello_head(&head).expect("magic");
        assert_eq!((head.version, head.lens), (VERSION, [3, 0, 7]));
        assert!(decode_hello_head(b"PRI * HTTP/2").is_err());
        for b in 0..=9u8 {
            assert_eq!(Status::from_u8(b).map(|s| s as u8), Some(b));
        }
        assert!(Status::from_u8(10).is_none());
    }
}
