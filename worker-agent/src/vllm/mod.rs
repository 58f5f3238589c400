//! Ingestion of vLLM's KV-event stream, so that an unmodified vLLM worker can
//! be tracked.
//!
//! Wire format, as in vLLM's `vllm/distributed/kv_events.py`
//! (`ZmqEventPublisher`): a ZMQ PUB socket sends multipart messages
//! `[topic, seq (8-byte big-endian), payload]`; the payload is a msgpack
//! `KVEventBatch`: `[ts, [events], data_parallel_rank]` (older vLLM,
//! `array_like=True`) or `{"ts", "events", "data_parallel_rank"}` (newer).
//! Each event is a tagged union: `["BlockStored", field, ...]` (older) or a map
//! with a `"type"` key (newer). `BlockStored` carries `block_hashes`,
//! `parent_block_hash`, `token_ids`, `block_size`, `lora_id`, `medium`,
//! `lora_name`, `extra_keys`, ...; `BlockRemoved` carries `block_hashes`,
//! `medium`; `AllBlocksCleared` nothing (or `medium`). Engine block hashes are
//! integers or bytes, depending on the version.
//!
//! vLLM's own hashes are not portable, so [`translate::Translator`]
//! recomputes kvtier's hashes from `token_ids` and uses vLLM's only to chain a
//! parent to its child (as Dynamo's indexer does).
//!
//! - [`decode`]: msgpack → [`decode::EngineEvent`]s.
//! - [`translate`]: engine events → kvtier [`crate::events::BlockChange`]s.
//! - [`ingest`]: the ZMQ SUB loop (sequence gaps, replay requests).

pub mod decode;
pub mod ingest;
pub mod translate;
