//! The persisted namespace record (id + HashingConfig protobuf), decoded at
//! start-up from the disk tier's settings.
#![no_main]

use kvtier_cache_server::namespace::decode_record;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Some((id, config)) = decode_record(data) {
        let mut again = id.to_le_bytes().to_vec();
        config.encode(&mut again).expect("encode into a Vec");
        assert_eq!(decode_record(&again), Some((id, config)));
    }
});
