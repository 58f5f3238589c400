//! The `kvtier.v1.WorkerService` handlers. Thin: validate, find the attached
//! pool, call the data path or the event log.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use kvtier_proto::v1::worker_service_server::WorkerService;
use kvtier_proto::v1::*;

use crate::events::BlockChange;
use crate::state::AgentState;
use crate::stats::Stats;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Service {
    state: Arc<AgentState>,
}

impl Service {
    /// A service over `state`.
    pub fn new(state: Arc<AgentState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl WorkerService for Service {
    async fn attach_pool(
        &self,
        request: Request<AttachPoolRequest>,
    ) -> Result<Response<AttachPoolResponse>, Status> {
        Ok(Response::new(
            self.state.attach(request.into_inner()).await?,
        ))
    }

    async fn offload(
        &self,
        request: Request<OffloadRequest>,
    ) -> Result<Response<OffloadResponse>, Status> {
        let req = request.into_inner();
        self.state.check_count(req.blocks.len())?;
        let pool = self.state.pool(req.pool_id)?;
        let started = std::time::Instant::now();
        let out = pool
            .offload(
                &req.blocks,
                self.state.config.call_timeout,
                &self.state.stats,
            )
            .await;
        let s = &self.state.stats;
        Stats::timed(&s.offload_calls, &s.offload_nanos, started.elapsed());
        let out = out?;
        Ok(Response::new(OffloadResponse {
            stored: out.stored,
            skipped: out.skipped,
            bytes_copied: out.bytes,
        }))
    }

    async fn onboard(
        &self,
        request: Request<OnboardRequest>,
    ) -> Result<Response<OnboardResponse>, Status> {
        let req = request.into_inner();
        self.state.check_count(req.hashes.len())?;
        let pool = self.state.pool(req.pool_id)?;
        let started = std::time::Instant::now();
        let out = pool
            .onboard(
                &req.hashes,
                &req.block_ids,
                &req.agent_id,
                self.state.config.onboard_timeout,
                &self.state.stats,
            )
            .await;
        let s = &self.state.stats;
        Stats::timed(&s.onboard_calls, &s.onboard_nanos, started.elapsed());
        let out = out?;
        let loaded_prefix = out.loaded.iter().take_while(|&&l| l).count() as u32;
        Ok(Response::new(OnboardResponse {
            loaded: out.loaded,
            loaded_prefix,
            degraded_reason: out.degraded_reason.unwrap_or_default(),
        }))
    }

    async fn pool_lookup(
        &self,
        request: Request<PoolLookupRequest>,
    ) -> Result<Response<PoolLookupResponse>, Status> {
        let req = request.into_inner();
        self.state.check_count(req.hashes.len())?;
        let pool = match req.pool_id {
            0 => self.state.current_pool()?,
            id => self.state.pool(id)?,
        };
        let (prefix_len, tiers) = pool
            .lookup(&req.hashes, self.state.config.call_timeout)
            .await?;
        Ok(Response::new(PoolLookupResponse {
            prefix_len,
            tiers: tiers.into_iter().map(|t| t as i32).collect(),
        }))
    }

    async fn report_blocks(
        &self,
        request: Request<ReportBlocksRequest>,
    ) -> Result<Response<ReportBlocksResponse>, Status> {
        let req = request.into_inner();
        self.state.pool(req.pool_id)?;
        let change = match WorkerEventKind::try_from(req.kind) {
            Ok(WorkerEventKind::Stored) => {
                for pair in req.blocks.windows(2) {
                    if pair[1].parent_hash != Some(pair[0].hash) {
                        return Err(Status::invalid_argument(
                            "stored blocks must form a chain: each block's parent_hash is the previous block's hash",
                        ));
                    }
                }
                BlockChange::Stored {
                    parent: req.blocks.first().and_then(|b| b.parent_hash),
                    hashes: req.blocks.iter().map(|b| b.hash).collect(),
                }
            }
            Ok(WorkerEventKind::Removed) => {
                BlockChange::Removed(req.blocks.iter().map(|b| b.hash).collect())
            }
            Ok(WorkerEventKind::Cleared) => BlockChange::Cleared,
            _ => {
                return Err(Status::invalid_argument(
                    "kind must be STORED, REMOVED or CLEARED",
                ))
            }
        };
        let event_id = self.state.events.record(change).unwrap_or(0);
        Ok(Response::new(ReportBlocksResponse { event_id }))
    }

    type SubscribeWorkerEventsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<WorkerEvent, Status>> + Send>>;

    async fn subscribe_worker_events(
        &self,
        request: Request<SubscribeWorkerEventsRequest>,
    ) -> Result<Response<Self::SubscribeWorkerEventsStream>, Status> {
        let from = request.into_inner().from_event_id;
        let stream = self
            .state
            .events
            .subscribe(from, self.state.shutdown.clone())
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(Response::new(Box::pin(futures::StreamExt::map(stream, Ok))))
    }

    async fn worker_snapshot(
        &self,
        _request: Request<WorkerSnapshotRequest>,
    ) -> Result<Response<WorkerSnapshotResponse>, Status> {
        Ok(Response::new(WorkerSnapshotResponse {
            snapshot: Some(self.state.events.snapshot()),
        }))
    }

    async fn worker_stats(
        &self,
        _request: Request<WorkerStatsRequest>,
    ) -> Result<Response<WorkerStatsResponse>, Status> {
        let s = &self.state.stats;
        let pool = self.state.pool.read().clone();
        Ok(Response::new(WorkerStatsResponse {
            offload_blocks: Stats::get(&s.offload_blocks),
            offload_skipped: Stats::get(&s.offload_skipped),
            offload_bytes: Stats::get(&s.offload_bytes),
            onboard_loaded: Stats::get(&s.onboard_loaded),
            onboard_missed: Stats::get(&s.onboard_missed),
            onboard_degraded: Stats::get(&s.onboard_degraded),
            engine_batches: Stats::get(&s.engine_batches),
            engine_events: Stats::get(&s.engine_events),
            engine_seq_gaps: Stats::get(&s.engine_seq_gaps),
            engine_errors: s
                .engine_errors()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            staging_buffers: pool.as_ref().map(|p| p.staging.count() as u32).unwrap_or(0),
            staging_free: pool
                .as_ref()
                .map(|p| p.staging.available() as u32)
                .unwrap_or(0),
            last_event_id: self.state.events.last_id(),
            epoch: self.state.events.epoch(),
        }))
    }
}
