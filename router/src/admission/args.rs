//! The admission queue's command-line flags (flattened into `kvtier-router`'s).

use std::time::Duration;

use super::{AdmissionConfig, OrderConfig, ThresholdConfig};

/// A flag value the queue cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionArgsError {
    /// `--queue-latency-boost` is negative or not a number.
    #[error("--queue-latency-boost must be a finite number ≥ 0, got {0}")]
    LatencyBoost(f64),
    /// `--busy-target-wait-ms 0` with a derived prefill bound.
    #[error(
        "--busy-target-wait-ms must be > 0 when --busy-prefill-tokens is 0 (derived from the \
         measured prefill rate)"
    )]
    TargetWait,
}

/// Flags of the admission queue.
#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionArgs {
    /// Queue calls at the router while every available worker is busy (`on`),
    /// or send each call at once whatever the load (`off`); `auto`: on when the
    /// workers schedule first come first served (`--worker-scheduling fcfs`),
    /// off when their engines order their own queue by priority (measured: the
    /// router's queue then only adds a wait, see bench/RESULTS.md).
    #[arg(long, env = "KVTIER_ROUTER_ADMISSION_QUEUE", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub admission_queue: String,
    /// How the workers' engines order their own prefill queue: `fcfs` (vLLM's
    /// default) or `priority` (vLLM `--scheduling-policy priority`, which honours
    /// the hint's priority itself). Decides `--admission-queue auto`.
    #[arg(long, env = "KVTIER_ROUTER_WORKER_SCHEDULING", default_value = "fcfs", value_parser = ["fcfs", "priority"])]
    pub worker_scheduling: String,
    /// A worker is busy at this many queued prefill tokens; 0 derives the
    /// bound from its measured prefill rate × --busy-target-wait-ms (16,384
    /// tokens until measured).
    #[arg(long, env = "KVTIER_ROUTER_BUSY_PREFILL_TOKENS", default_value_t = 0)]
    pub busy_prefill_tokens: u64,
    /// Queueing delay a worker may hold before it is busy, for the derived bound.
    #[arg(long, env = "KVTIER_ROUTER_BUSY_TARGET_WAIT_MS", default_value_t = 250)]
    pub busy_target_wait_ms: u64,
    /// A worker is busy at this many running calls (prefill or decode); 0: no bound.
    #[arg(long, env = "KVTIER_ROUTER_BUSY_RUNNING_CALLS", default_value_t = 0)]
    pub busy_running_calls: u32,
    /// Calls that may wait; one more gets 429 with Retry-After.
    #[arg(long, env = "KVTIER_ROUTER_QUEUE_MAX_LEN", default_value_t = AdmissionConfig::default().max_len)]
    pub queue_max_len: usize,
    /// Longest wait of a call in the queue; then 503 with Retry-After.
    #[arg(
        long,
        env = "KVTIER_ROUTER_QUEUE_MAX_WAIT_MS",
        default_value_t = 30_000
    )]
    pub queue_max_wait_ms: u64,
    /// A waiting call gains one priority level per this many ms waited; 0: no aging.
    #[arg(long, env = "KVTIER_ROUTER_QUEUE_AGING_MS", default_value_t = 500)]
    pub queue_aging_ms: u64,
    /// Priority levels a fully latency-sensitive call gains in the queue.
    #[arg(long, env = "KVTIER_ROUTER_QUEUE_LATENCY_BOOST", default_value_t = OrderConfig::default().latency_boost)]
    pub queue_latency_boost: f64,
}

impl AdmissionArgs {
    /// The queue's configuration; None with `--admission-queue off`.
    pub fn config(&self) -> Result<Option<AdmissionConfig>, AdmissionArgsError> {
        if !(self.queue_latency_boost.is_finite() && self.queue_latency_boost >= 0.0) {
            return Err(AdmissionArgsError::LatencyBoost(self.queue_latency_boost));
        }
        if self.busy_prefill_tokens == 0 && self.busy_target_wait_ms == 0 {
            return Err(AdmissionArgsError::TargetWait);
        }
        let on = match self.admission_queue.as_str() {
            "on" => true,
            "off" => false,
            _ => self.worker_scheduling != "priority",
        };
        if !on {
            return Ok(None);
        }
        Ok(Some(AdmissionConfig {
            threshold: ThresholdConfig {
                busy_prefill_tokens: self.busy_prefill_tokens,
                busy_running_calls: self.busy_running_calls,
                target_wait: Duration::from_millis(self.busy_target_wait_ms),
                ..ThresholdConfig::default()
            },
            order: OrderConfig {
                latency_boost: self.queue_latency_boost,
                aging: (self.queue_aging_ms > 0)
                    .then(|| Duration::from_millis(self.queue_aging_ms)),
            },
            max_len: self.queue_max_len,
            max_wait: Duration::from_millis(self.queue_max_wait_ms),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        admission: AdmissionArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<AdmissionConfig>, AdmissionArgsError> {
        let mut all = vec!["kvtier-router"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all)
            .expect("flags parse")
            .admission
            .config()
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        assert_eq!(parse(&[]), Ok(Some(AdmissionConfig::default())));
        assert_eq!(parse(&["--admission-queue", "off"]), Ok(None));
        // Engines that order by priority themselves: the router's queue steps aside...
        assert_eq!(parse(&["--worker-scheduling", "priority"]), Ok(None));
        // ...unless asked for.
        assert_eq!(
            parse(&["--worker-scheduling", "priority", "--admission-queue", "on"]),
            Ok(Some(AdmissionConfig::default()))
        );
    }

    #[test]
    fn flags_set_each_field_and_bad_values_are_refused() {
        let config = parse(&[
            "--busy-prefill-tokens",
            "4096",
            "--busy-running-calls",
            "8",
            "--queue-max-len",
            "3",
            "--queue-max-wait-ms",
            "250",
            "--queue-aging-ms",
            "0",
            "--queue-latency-boost",
            "2",
        ])
        .expect("valid")
        .expect("on");
        assert_eq!(config.threshold.busy_prefill_tokens, 4096);
        assert_eq!(config.threshold.busy_running_calls, 8);
        assert_eq!(config.max_len, 3);
        assert_eq!(config.max_wait, Duration::from_millis(250));
        assert_eq!(config.order.aging, None);
        assert_eq!(config.order.latency_boost, 2.0);
        assert_eq!(
            parse(&["--queue-latency-boost=-1"]),
            Err(AdmissionArgsError::LatencyBoost(-1.0))
        );
        assert_eq!(
            parse(&["--busy-target-wait-ms", "0"]),
            Err(AdmissionArgsError::TargetWait)
        );
        assert!(Flags::try_parse_from(["kvtier-router", "--admission-queue", "maybe"]).is_err());
    }
}
