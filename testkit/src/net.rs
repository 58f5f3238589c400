//! Loopback networking of the harness: a free port, and a blocking HTTP/1.1
//! GET small enough to read `/metrics`, `/load` or `/health` without an
//! async runtime (chunked bodies included: hyper-based servers send them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::Error;

/// A free loopback port: bound, then released (another process may take it
/// in between; good enough for tests that need a fixed port up front).
pub fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(Error::io("binding a free loopback port"))
}

/// `GET path` on `addr` over a fresh connection; the body of a `200`, with
/// chunked transfer encoding undone. 5 s to connect, 10 s per read.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, Error> {
    let what = format!("GET http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(Error::io(what.clone()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(Error::io(what.clone()))?;
    // One write: the request is tiny, and a server that answers after its
    // first read must not see the rest arrive on a closed socket.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(Error::io(what.clone()))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(Error::io(what))?;
    parse_response(path, &response)
}

/// The body of a complete HTTP/1.1 response to `GET path`.
fn parse_response(path: &str, response: &[u8]) -> Result<String, Error> {
    let malformed = || Error::Http {
        path: path.to_string(),
        head: "malformed HTTP response".into(),
    };
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    if !head.starts_with("HTTP/1.1 200") {
        return Err(Error::Http {
            path: path.to_string(),
            head: head.into_owned(),
        });
    }
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Undoes chunked transfer encoding; stops at the last chunk or at the
/// first malformed size (what came before is kept).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        // Chunk extensions (`;name=value`) are allowed after the size.
        let size = size.split(';').next().unwrap_or("").trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        let tail = &rest[eol + 2..];
        if n == 0 || tail.len() < n {
            break;
        }
        out.extend_from_slice(&tail[..n]);
        rest = tail[n..].strip_prefix(b"\r\n").unwrap_or(&tail[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response("/m", plain).unwrap(), "hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response("/m", chunked).unwrap(), "hello world");
    }

    #[test]
    fn errors_and_truncation() {
        let err = parse_response("/m", b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err();
        assert!(err.to_string().contains("GET /m: HTTP/1.1 404"), "{err}");
        assert!(parse_response("/m", b"garbage").is_err());
        assert_eq!(dechunk(b"5\r\nhel"), b"");
        assert_eq!(dechunk(b"2\r\nhi\r\nzz\r\n"), b"hi");
    }

    #[test]
    fn get_from_a_local_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request cut short");
                request.extend_from_slice(&buf[..n]);
            }
            assert!(request.starts_with(b"GET /metrics HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nup 1\n").unwrap();
        });
        assert_eq!(http_get(addr, "/metrics").unwrap(), "up 1\n");
        server.join().unwrap();
        assert!(free_port().unwrap() > 0);
    }
}
