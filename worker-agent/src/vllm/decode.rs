//! Decoding of vLLM `KVEventBatch` payloads (both encodings).

use rmpv::Value;

/// An engine block hash: vLLM sends ints (older) or bytes (newer); bytes are
/// folded to 64 bits. Only used as a key to chain parent and child.
pub type EngineHash = u64;

/// One vLLM KV event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// Blocks stored in the engine's cache.
    BlockStored {
        /// Engine hashes of the blocks, in order.
        block_hashes: Vec<EngineHash>,
        /// Engine hash of the block before the first one.
        parent_block_hash: Option<EngineHash>,
        /// Tokens of all the blocks, concatenated.
        token_ids: Vec<u32>,
        /// Tokens per block, as the engine sees it.
        block_size: u64,
        /// Medium ("GPU", "CPU", ...), when given.
        medium: Option<String>,
        /// LoRA adapter name, when given.
        lora_name: Option<String>,
    },
    /// Blocks removed from the engine's cache.
    BlockRemoved {
        /// Engine hashes of the blocks.
        block_hashes: Vec<EngineHash>,
        /// Medium, when given.
        medium: Option<String>,
    },
    /// The whole cache (or one medium) was cleared.
    AllBlocksCleared {
        /// Medium, when given.
        medium: Option<String>,
    },
}

/// A decoded `KVEventBatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineBatch {
    /// Engine timestamp (seconds).
    pub ts: f64,
    /// Events, in order; each is decoded on its own so one bad event does not
    /// lose the batch.
    pub events: Vec<Result<EngineEvent, DecodeError>>,
    /// Data-parallel rank of the publisher.
    pub dp_rank: Option<i64>,
}

/// Why a payload or event could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid msgpack.
    #[error("not msgpack: {0}")]
    Msgpack(String),
    /// Valid msgpack, but not a KVEventBatch.
    #[error("malformed batch: {0}")]
    Batch(String),
    /// An event of an unknown type.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// A field is missing or of the wrong type.
    #[error("event {event}: bad field {field}")]
    Field {
        /// Event type.
        event: &'static str,
        /// Field name.
        field: &'static str,
    },
}

impl DecodeError {
    /// Short label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Msgpack(_) => "not_msgpack",
            Self::Batch(_) => "malformed_batch",
            Self::UnknownType(_) => "unknown_event_type",
            Self::Field { .. } => "malformed_event",
        }
    }
}

/// Decodes one payload.
pub fn decode_batch(payload: &[u8]) -> Result<EngineBatch, DecodeError> {
    let mut cursor = payload;
    let value =
        rmpv::decode::read_value(&mut cursor).map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    let (ts, events, dp) = match &value {
        Value::Array(items) => (items.first(), items.get(1), items.get(2)),
        Value::Map(_) => (
            map_get(&value, "ts"),
            map_get(&value, "events"),
            map_get(&value, "data_parallel_rank"),
        ),
        other => {
            return Err(DecodeError::Batch(format!(
                "expected array or map, got {other}"
            )))
        }
    };
    let ts = ts
        .and_then(|v| v.as_f64().or_else(|| v.as_i64().map(|i| i as f64)))
        .ok_or_else(|| DecodeError::Batch("missing ts".into()))?;
    let events = events
        .and_then(Value::as_array)
        .ok_or_else(|| DecodeError::Batch("missing events array".into()))?;
    let dp_rank = dp.and_then(Value::as_i64);
    Ok(EngineBatch {
        ts,
        events: events.iter().map(decode_event).collect(),
        dp_rank,
    })
}

fn map_get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_nil())
}

/// Field access over either encoding: positional (after the tag) or by name.
struct Fields<'a> {
    value: &'a Value,
    event: &'static str,
}

impl<'a> Fields<'a> {
    fn get(&self, index: usize, name: &str) -> Option<&'a Value> {
        match self.value {
            Value::Array(items) => items.get(index + 1).filter(|v| !v.is_nil()),
            _ => map_get(self.value, name),
        }
    }

    fn hashes(&self, index: usize, name: &'static str) -> Result<Vec<EngineHash>, DecodeError> {
        let bad = DecodeError::Field {
            event: self.event,
            field: name,
        };
        self.get(index, name)
            .and_then(Value::as_array)
            .ok_or_else(|| bad.clone())?
            .iter()
            .map(|v| engine_hash(v).ok_or_else(|| bad.clone()))
            .collect()
    }

    fn opt_hash(
        &self,
        index: usize,
        name: &'static str,
    ) -> Result<Option<EngineHash>, DecodeError> {
        match self.get(index, name) {
            None => Ok(None),
            Some(v) => engine_hash(v).map(Some).ok_or(DecodeError::Field {
                event: self.event,
                field: name,
            }),
        }
    }

    fn opt_str(&self, index: usize, name: &str) -> Option<String> {
        self.get(index, name)
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// An engine hash from an int (signed or not) or bytes (folded with XXH3-64).
fn engine_hash(v: &Value) -> Option<EngineHash> {
    match v {
        Value::Integer(i) => i.as_u64().or_else(|| i.as_i64().map(|x| x as u64)),
        Value::Binary(b) => Some(xxhash_rust::xxh3::xxh3_64(b)),
        _ => None,
    }
}

fn decode_event(value: &Value) -> Result<EngineEvent, DecodeError> {
    let tag = match value {
        Value::Array(items) => items.first().and_then(Value::as_str),
        Value::Map(_) => map_get(value, "type").and_then(Value::as_str),
        _ => None,
    }
    .ok_or_else(|| DecodeError::UnknownType(format!("{value}")))?;
    match tag {
        "BlockStored" => {
            let f = Fields {
                value,
                event: "BlockStored",
            };
            let bad = |field| DecodeError::Field {
                event: "BlockStored",
                field,
            };
            let token_ids = f
                .get(2, "token_ids")
                .and_then(Value::as_array)
                .ok_or(bad("token_ids"))?
                .iter()
                .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or(bad("token_ids"))?;
            Ok(EngineEvent::BlockStored {
                block_hashes: f.hashes(0, "block_hashes")?,
                parent_block_hash: f.opt_hash(1, "parent_block_hash")?,
                token_ids,
                block_size: f
                    .get(3, "block_size")
                    .and_then(Value::as_u64)
                    .ok_or(bad("block_size"))?,
                medium: f.opt_str(5, "medium"),
                lora_name: f.opt_str(6, "lora_name"),
            })
        }
        "BlockRemoved" => {
            let f = Fields {
                value,
                event: "BlockRemoved",
            };
            Ok(EngineEvent::BlockRemoved {
                block_hashes: f.hashes(0, "block_hashes")?,
                medium: f.opt_str(1, "medium"),
            })
        }
        "AllBlocksCleared" => {
            let f = Fields {
                value,
                event: "AllBlocksCleared",
            };
            Ok(EngineEvent::AllBlocksCleared {
                medium: f.opt_str(0, "medium"),
            })
        }
        other => Err(DecodeError::UnknownType(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encode");
        out
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn tagged_array_batch() {
        let stored = Value::Array(vec![
            s("BlockStored"),
            Value::Array(vec![Value::from(11u64), Value::from(-5i64)]),
            Value::Nil,
            Value::Array((0..8u32).map(Value::from).collect()),
            Value::from(4u64),
            Value::Nil,
            s("GPU"),
        ]);
        let removed = Value::Array(vec![
            s("BlockRemoved"),
            Value::Array(vec![Value::from(11u64)]),
        ]);
        let cleared = Value::Array(vec![s("AllBlocksCleared")]);
        let batch = Value::Array(vec![
            Value::F64(1.5),
            Value::Array(vec![stored, removed, cleared]),
            Value::from(0),
        ]);
        let b = decode_batch(&encode(&batch)).expect("batch");
        assert_eq!(b.ts, 1.5);
        assert_eq!(b.dp_rank, Some(0));
        assert_eq!(
            b.events[0],
            Ok(EngineEvent::BlockStored {
                block_hashes: vec![11, (-5i64) as u64],
                parent_block_hash: None,
                token_ids: (0..8).collect(),
                block_size: 4,
                medium: Some("GPU".into()),
                lora_name: None,
            })
        );
        assert_eq!(
            b.events[1],
            Ok(EngineEvent::BlockRemoved {
                block_hashes: vec![11],
                medium: None
            })
        );
        assert_eq!(
            b.events[2],
            Ok(EngineEvent::AllBlocksCleared { medium: None })
        );
    }

    #[test]
    fn map_batch_with_bytes_hashes_and_bad_event() {
        let stored = Value::Map(vec![
            (s("type"), s("BlockStored")),
            (
                s("block_hashes"),
                Value::Array(vec![Value::Binary(vec![1; 32])]),
            ),
            (s("parent_block_hash"), Value::Binary(vec![2; 32])),
            (
                s("token_ids"),
                Value::Array((0..4u32).map(Value::from).collect()),
            ),
            (s("block_size"), Value::from(4u64)),
            (s("medium"), s("GPU")),
        ]);
        let unknown = Value::Map(vec![(s("type"), s("BlockTeleported"))]);
        let batch = Value::Map(vec![
            (s("ts"), Value::F64(2.0)),
            (s("events"), Value::Array(vec![stored, unknown])),
        ]);
        let b = decode_batch(&encode(&batch)).expect("batch");
        match &b.events[0] {
            Ok(EngineEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                ..
            }) => {
                assert_eq!(block_hashes[0], xxhash_rust::xxh3::xxh3_64(&[1; 32]));
                assert_eq!(
                    *parent_block_hash,
                    Some(xxhash_rust::xxh3::xxh3_64(&[2; 32]))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            b.events[1].as_ref().map_err(DecodeError::reason),
            Err("unknown_event_type")
        );
        assert!(decode_batch(b"\xc1").is_err());
    }
}
