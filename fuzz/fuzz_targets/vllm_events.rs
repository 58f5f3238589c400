//! vLLM KV-event payloads as the worker agent receives them from an engine's
//! ZMQ socket (msgpack `KVEventBatch`, tagged-array and map encodings), then
//! translated into kvtier block changes (hashes recomputed from token ids).
#![no_main]

use kvtier_proto::hashing::{BlockHasher, DEFAULT_SEED};
use kvtier_worker_agent::vllm::decode::decode_batch;
use kvtier_worker_agent::vllm::translate::Translator;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = decode_batch(data) else {
        return;
    };
    let mut translator = Translator::new(BlockHasher::new(16, DEFAULT_SEED));
    for event in batch.events.into_iter().flatten() {
        let _ = translator.apply(event);
    }
});
