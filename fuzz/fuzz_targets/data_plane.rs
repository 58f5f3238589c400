//! The binary data plane's frame decoding, as the server does it: the bytes
//! of one connection (HELLO, PUT and GET frames, truncated anywhere, with
//! any lengths and counts) go through `dataplane::serve_connection` over an
//! in-memory stream, against an in-memory store with one namespace and one
//! open session. The first input byte picks the mode: bit 0 set prepends a
//! valid HELLO for that session, so the rest reaches the PUT/GET decoders.
//!
//! Checks: the server never panics or hangs, and what it sends back is a
//! well-formed sequence of response frames (known status, version 1, the
//! length that follows present in full, payloads of exactly `block_bytes`,
//! error messages within `MAX_MESSAGE_LEN`), starting with the HELLO answer.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kvtier_cache_server::agents::{AgentBook, AgentLimits};
use kvtier_cache_server::config::StoreConfig;
use kvtier_cache_server::dataplane::{serve_connection, wire};
use kvtier_cache_server::namespace::NamespaceRegistry;
use kvtier_cache_server::service::session::Sessions;
use kvtier_cache_server::service::ServiceState;
use kvtier_cache_server::store::TieredStore;
use kvtier_policy::lru::Lru;
use kvtier_proto::v1::HashingConfig;
use kvtier_security::{Authenticator, ClientLimiter, LimitConfig};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

const BLOCK_BYTES: u64 = 64;

struct Harness {
    rt: tokio::runtime::Runtime,
    state: Arc<ServiceState>,
    session: String,
    /// Kept alive: a dropped sender reads as "stop" to the connection.
    stop: watch::Sender<bool>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let store_config = StoreConfig {
            host_capacity: 1 << 20,
            disk_capacity: 0,
            ..StoreConfig::default()
        };
        let store = TieredStore::open(&store_config, Box::new(Lru::new())).expect("store");
        let namespaces = NamespaceRegistry::new(Vec::new(), 64 << 20);
        let config = HashingConfig {
            block_tokens: 16,
            seed: 0,
            salt: String::new(),
            block_bytes: BLOCK_BYTES,
            kv_layout: "fuzz".into(),
            model: "fuzz".into(),
        };
        let (ns, _) = namespaces
            .handshake_as("fuzz", Some(config), None, None)
            .expect("handshake");
        let sessions = Sessions::new(16);
        let session = sessions.open(ns, None);
        let state = Arc::new(ServiceState {
            store: Arc::clone(&store),
            namespaces,
            sessions,
            agents: AgentBook::new(
                store,
                AgentLimits {
                    pin_quota_blocks: 1024,
                    max_agents_per_namespace: 16,
                    max_lease_ms: 60_000,
                },
            ),
            epoch: 1,
            max_message_bytes: BLOCK_BYTES + (64 << 10),
            admission: Arc::new(Semaphore::new(4)),
            max_concurrent_requests: 4,
            auth: Authenticator::disabled(),
            limits: ClientLimiter::new(LimitConfig::default()),
            cluster: None,
        });
        let (stop, _) = watch::channel(false);
        Harness {
            rt,
            state,
            session,
            stop,
        }
    })
}

/// Checks that `out` is a sequence of whole response frames.
fn check_responses(out: &[u8], with_hello: bool) {
    let mut rest = out;
    let mut first = true;
    while !rest.is_empty() {
        let head: [u8; wire::HEADER_LEN] = rest
            .get(..wire::HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .unwrap_or_else(|| panic!("a partial response header: {} bytes", rest.len()));
        let h = wire::ResponseHeader::decode(&head);
        let status = wire::Status::from_u8(h.status)
            .unwrap_or_else(|| panic!("unknown response status {}", h.status));
        assert_eq!(h.version, wire::VERSION, "response version");
        let len = usize::try_from(h.len).unwrap_or(usize::MAX);
        let body = wire::HEADER_LEN
            .checked_add(len)
            .and_then(|end| rest.get(wire::HEADER_LEN..end))
            .unwrap_or_else(|| panic!("{} announces {len} bytes that never came", status.name()));
        if status.is_error() {
            assert!(h.len <= wire::MAX_MESSAGE_LEN, "error message too long");
            assert!(std::str::from_utf8(body).is_ok(), "error message not UTF-8");
        } else if status == wire::Status::Ok && !first {
            // A PUT acknowledgement carries nothing, a GET hit one whole block.
            assert!(h.len == 0 || h.len == BLOCK_BYTES, "payload of {len} bytes");
        } else {
            assert!(len == 0, "{} with {len} bytes", status.name());
        }
        if first && with_hello {
            assert_eq!(status, wire::Status::Ok, "a valid HELLO refused");
            assert_eq!(h.hash, BLOCK_BYTES, "HELLO answer names block_bytes");
        }
        first = false;
        rest = &rest[wire::HEADER_LEN + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let h = harness();
    let with_hello = mode & 1 == 1;
    let mut input = Vec::with_capacity(body.len() + 64);
    if with_hello {
        input.extend_from_slice(&wire::encode_hello(&h.session, "", "agent"));
    }
    input.extend_from_slice(body);

    let out = h.rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 << 10);
        let conn = tokio::spawn(serve_connection(
            server,
            None,
            Arc::clone(&h.state),
            h.stop.subscribe(),
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async move {
            // The server may close early (PROTOCOL): a failed write is fine.
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let read = async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let ((), out) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(write, read)
        })
        .await
        .expect("the server neither answered nor closed the connection within 5 s");
        conn.await.expect("the connection task panicked");
        out
    });
    check_responses(&out, with_hello);
});
