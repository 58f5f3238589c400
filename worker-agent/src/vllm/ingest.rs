//! The ZMQ SUB loop: receives vLLM's `[topic, seq, payload]` messages, checks
//! `seq` for gaps (asking the engine's replay endpoint for the missed batches
//! when one is configured), decodes, translates and records the events.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use super::decode::decode_batch;
use super::translate::Translator;
use crate::events::EventLog;
use crate::stats::Stats;

/// Longest wait for a replay answer.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);
/// Most batches accepted from one replay.
const REPLAY_MAX_BATCHES: usize = 100_000;

/// Applies decoded payloads to the event log; owns the sequence cursor.
#[derive(Debug)]
pub struct Ingestor {
    translator: Translator,
    log: Arc<EventLog>,
    stats: Arc<Stats>,
    /// Sequence number of the last batch applied.
    last_seq: Option<u64>,
}

/// What a sequence number says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The next batch (or the first one seen).
    Contiguous,
    /// Batches `expected..got` were missed.
    Gap {
        /// First missed.
        expected: u64,
        /// Received.
        got: u64,
    },
    /// Already applied (a replay overlapping the live stream): skip.
    Stale,
    /// Sequence 0 after a later one: the publisher restarted (its cache is empty).
    Restarted,
}

impl Ingestor {
    /// An ingestor translating into `log`.
    pub fn new(translator: Translator, log: Arc<EventLog>, stats: Arc<Stats>) -> Self {
        Self {
            translator,
            log,
            stats,
            last_seq: None,
        }
    }

    /// Classifies `seq` against the cursor.
    pub fn check(&self, seq: u64) -> SeqCheck {
        match self.last_seq {
            None => SeqCheck::Contiguous,
            Some(last) if seq == 0 && last > 0 => SeqCheck::Restarted,
            Some(last) if seq <= last => SeqCheck::Stale,
            Some(last) if seq == last + 1 => SeqCheck::Contiguous,
            Some(last) => SeqCheck::Gap {
                expected: last + 1,
                got: seq,
            },
        }
    }

    /// The engine restarted: its cache is empty and its numbering starts again.
    pub fn restart(&mut self) {
        self.last_seq = None;
        self.translator.clear();
        self.log.record(crate::events::BlockChange::Cleared);
    }

    /// Applies one payload with sequence number `seq` (`None`: unnumbered).
    pub fn apply(&mut self, seq: Option<u64>, payload: &[u8]) {
        if let Some(seq) = seq {
            self.last_seq = Some(seq);
        }
        Stats::add(&self.stats.engine_batches, 1);
        let batch = match decode_batch(payload) {
            Ok(b) => b,
            Err(e) => {
                self.stats.engine_error(e.reason());
                tracing::warn!(error = %e, ?seq, "undecodable vLLM event batch");
                return;
            }
        };
        for event in batch.events {
            let event = match event {
                Ok(ev) => ev,
                Err(e) => {
                    self.stats.engine_error(e.reason());
                    tracing::warn!(error = %e, ?seq, "undecodable vLLM event");
                    continue;
                }
            };
            match self.translator.apply(event) {
                Ok(change) => {
                    self.log.record(change);
                    Stats::add(&self.stats.engine_events, 1);
                }
                Err(e) => {
                    self.stats.engine_error(e.reason());
                    tracing::warn!(error = %e, ?seq, "vLLM event not applied");
                }
            }
        }
    }
}

/// Settings of the ZMQ subscriber.
#[derive(Debug, Clone)]
pub struct ZmqSettings {
    /// PUB endpoint, e.g. `tcp://127.0.0.1:5557`.
    pub endpoint: String,
    /// Optional ROUTER replay endpoint.
    pub replay: Option<String>,
    /// Topic prefix ("" for all).
    pub topic: String,
    /// Silence after which the socket is replaced (see [`run`]).
    pub idle_reconnect: Duration,
}

fn parse_seq(frame: Option<&Bytes>) -> Option<u64> {
    let bytes: [u8; 8] = frame?.as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Messages buffered between the socket reader and the ingest loop.
const READER_QUEUE: usize = 1024;

/// Connects, subscribes and forwards messages into `tx` until the channel
/// closes. Runs as a task of its own so that a failure inside the ZMQ library
/// (it panics on some unexpected frames) only costs a reconnect.
async fn read_socket(settings: ZmqSettings, tx: mpsc::Sender<ZmqMessage>) {
    let mut socket = SubSocket::new();
    if let Err(e) = socket.connect(&settings.endpoint).await {
        tracing::warn!(endpoint = %settings.endpoint, error = %e, "cannot connect to vLLM events");
        return;
    }
    if let Err(e) = socket.subscribe(&settings.topic).await {
        tracing::warn!(error = %e, "cannot subscribe to vLLM events");
        return;
    }
    tracing::info!(endpoint = %settings.endpoint, "subscribed to vLLM KV events");
    loop {
        match socket.recv().await {
            Ok(m) => {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "vLLM event stream broke; reconnecting");
                return;
            }
        }
    }
}

/// Runs the subscriber until `shutdown` turns true.
///
/// A publisher that goes away is not reported by the ZMQ library, so after
/// `settings.idle_reconnect` without a message the socket is replaced (cheap;
/// batches missed meanwhile show up as a sequence gap and are replayed when a
/// replay endpoint is configured). A restarted publisher starts again at
/// sequence 0, which clears the worker's blocks.
pub async fn run(
    settings: ZmqSettings,
    mut ingestor: Ingestor,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let (tx, mut rx) = mpsc::channel(READER_QUEUE);
        let reader = tokio::spawn(read_socket(settings.clone(), tx));
        let mut received = false;
        loop {
            let next = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep(settings.idle_reconnect) => {
                    tracing::debug!("no vLLM events for a while; resubscribing");
                    reader.abort();
                    break;
                }
                _ = shutdown.changed() => {
                    reader.abort();
                    return;
                }
            };
            match next {
                Some(message) => {
                    received = true;
                    backoff = Duration::from_millis(100);
                    handle(&settings, &mut ingestor, message).await;
                }
                None => {
                    // the reader ended (error or panic): reconnect after a pause
                    if let Err(e) = reader.await {
                        if e.is_panic() {
                            ingestor.stats.engine_error("reader_panicked");
                            tracing::error!("vLLM event reader panicked; reconnecting");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
        if !received {
            tracing::debug!("vLLM event publisher silent or unreachable");
        }
    }
}

async fn handle(settings: &ZmqSettings, ingestor: &mut Ingestor, message: ZmqMessage) {
    // [topic, seq, payload]; tolerate [seq, payload] and [payload].
    let frames = message.into_vec();
    let (seq, payload) = match frames.len() {
        3 => (parse_seq(frames.get(1)), frames.get(2)),
        2 => (parse_seq(frames.first()), frames.get(1)),
        1 => (None, frames.first()),
        _ => (None, None),
    };
    let Some(payload) = payload else {
        ingestor.stats.engine_error("malformed_message");
        tracing::warn!(
            frames = frames.len(),
            "vLLM event message with an unexpected frame count"
        );
        return;
    };
    if let Some(seq) = seq {
        match ingestor.check(seq) {
            SeqCheck::Stale => return,
            SeqCheck::Contiguous => {}
            SeqCheck::Restarted => {
                tracing::warn!(
                    "vLLM event sequence restarted at 0: the engine restarted; clearing its blocks"
                );
                ingestor.restart();
            }
            SeqCheck::Gap { expected, got } => {
                Stats::add(&ingestor.stats.engine_seq_gaps, 1);
                tracing::warn!(expected, got, "gap in vLLM event sequence");
                if let Some(replay) = &settings.replay {
                    match fetch_replay(replay, expected).await {
                        Ok(batches) => {
                            for (s, p) in batches {
                                if s < got && ingestor.check(s) != SeqCheck::Stale {
                                    ingestor.apply(Some(s), &p);
                                }
                            }
                        }
                        Err(e) => {
                            ingestor.stats.engine_error("replay_failed");
                            tracing::warn!(error = %e, "vLLM replay failed; continuing after the gap");
                        }
                    }
                }
            }
        }
    }
    ingestor.apply(seq, payload);
}

/// Asks a vLLM replay (ROUTER) endpoint for the batches from `start` on.
async fn fetch_replay(endpoint: &str, start: u64) -> Result<Vec<(u64, Bytes)>, String> {
    let work = async {
        let mut socket = DealerSocket::new();
        socket.connect(endpoint).await.map_err(|e| e.to_string())?;
        let request = ZmqMessage::try_from(vec![
            Bytes::new(),
            Bytes::copy_from_slice(&start.to_be_bytes()),
        ])
        .map_err(|e| e.to_string())?;
        socket.send(request).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        loop {
            let frames = socket.recv().await.map_err(|e| e.to_string())?.into_vec();
            // [b"", seq, payload]; the end marker has seq = -1.
            let n = frames.len();
            let seq_frame = frames.get(n.wrapping_sub(2));
            let raw = seq_frame
                .and_then(|f| <[u8; 8]>::try_from(f.as_ref()).ok())
                .ok_or("malformed replay frame")?;
            if i64::from_be_bytes(raw) == -1 {
                return Ok(out);
            }
            let payload = frames.get(n - 1).cloned().unwrap_or_default();
            out.push((u64::from_be_bytes(raw), payload));
            if out.len() >= REPLAY_MAX_BATCHES {
                return Ok(out);
            }
        }
    };
    tokio::time::timeout(REPLAY_TIMEOUT, work)
        .await
        .map_err(|_| format!("no replay answer within {REPLAY_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_proto::hashing::{BlockHasher, DEFAULT_SEED};

    #[test]
    fn sequence_cursor() {
        let log = EventLog::new("w", 16);
        let mut ing = Ingestor::new(
            Translator::new(BlockHasher::new(4, DEFAULT_SEED)),
            log.clone(),
            Arc::new(Stats::default()),
        );
        assert_eq!(ing.check(7), SeqCheck::Contiguous);
        ing.apply(Some(7), b"\xc0"); // nil: not a batch, counted
        assert_eq!(ing.check(8), SeqCheck::Contiguous);
        assert_eq!(ing.check(7), SeqCheck::Stale);
        assert_eq!(
            ing.check(10),
            SeqCheck::Gap {
                expected: 8,
                got: 10
            }
        );
        assert_eq!(ing.check(0), SeqCheck::Restarted);
        ing.restart();
        assert_eq!(ing.check(0), SeqCheck::Contiguous);
        assert_eq!(log.last_id(), 1, "a restart clears the worker's blocks");
        assert_eq!(ing.stats.engine_errors().get("malformed_batch"), Some(&1));
    }
}
