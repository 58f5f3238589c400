//! Every kvtier.v1 request message the server decodes from the network,
//! followed by the server's own validation of it (the namespace registry's
//! handshake checks). The first byte picks the message type.
#![no_main]

use kvtier_cache_server::namespace::{validate_name, NamespaceRegistry};
use kvtier_proto::v1::*;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Re-encoding is stable. (Bytes, not structs, are compared: a NaN float
/// field is never equal to itself; see corpus/proto_requests/regression-nan.)
fn round_trip<M: Message + Default>(m: &M) {
    let bytes = m.encode_to_vec();
    let again = M::decode(bytes.as_slice()).expect("re-decoding our own encoding");
    assert_eq!(again.encode_to_vec(), bytes);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 9 {
        0 => {
            if let Ok(m) = HandshakeRequest::decode(body) {
                round_trip(&m);
                let _ = validate_name(&m.namespace);
                let registry = NamespaceRegistry::new(Vec::new(), 64 << 20);
                if let Ok((ns, created)) =
                    registry.handshake_as(&m.namespace, m.config.clone(), Some("t"), None)
                {
                    assert!(created);
                    // The same handshake again is accepted, another tenant is not.
                    assert!(registry
                        .handshake_as(&m.namespace, m.config.clone(), Some("t"), None)
                        .is_ok());
                    assert!(registry
                        .handshake_as(&m.namespace, m.config, Some("u"), None)
                        .is_err());
                    assert!(ns.config.block_tokens > 0 && ns.config.block_bytes > 0);
                }
            }
        }
        1 => {
            if let Ok(m) = PutRequest::decode(body) {
                round_trip(&m);
            }
        }
        2 => {
            if let Ok(m) = GetRequest::decode(body) {
                round_trip(&m);
            }
        }
        3 => {
            if let Ok(m) = LookupRequest::decode(body) {
                round_trip(&m);
            }
        }
        4 => {
            if let Ok(m) = WatchEventsRequest::decode(body) {
                round_trip(&m);
            }
        }
        5 => {
            if let Ok(m) = RegisterAgentRequest::decode(body) {
                round_trip(&m);
            }
        }
        6 => {
            if let Ok(m) = HintRequest::decode(body) {
                round_trip(&m);
                let _ = CallEnding::try_from(m.ending);
            }
        }
        7 => {
            if let Ok(m) = EndAgentRequest::decode(body) {
                round_trip(&m);
            }
        }
        _ => {
            if let Ok(m) = StatsRequest::decode(body) {
                round_trip(&m);
            }
        }
    }
});
