//! `kvtier.v1.RouterService`: a thin gRPC shell over [`crate::routing`] and
//! [`crate::lifecycle`]. With tokens on, every call is authorized against
//! the model's namespace: queries (FindMatches, Route, ListWorkers) need
//! read access, anything that changes what others see (ReportLoad, agent
//! lifecycle, a committed Route) needs write access.
//!
//! In a cluster (`--cluster`) a lifecycle call goes to every member; its
//! answer merges theirs: it fails only when every member failed
//! ([`crate::lifecycle::fanout::merge`]).

use std::sync::Arc;
use std::time::Instant;

use metrics::{counter, histogram};
use tonic::{Request, Response, Status};

use kvtier_proto::v1::router_service_server::RouterService;
use kvtier_proto::v1::*;
use kvtier_security::{front::require, Client, Need};

use crate::app::{ModelState, Models};
use crate::index::WorkerOverlap;
use crate::lifecycle::{AgentSpec, Lifecycle};
use crate::load::Load;
use crate::metrics as m;
use crate::routing::{RouteError, RouteHints, MAX_QUERY_BLOCKS};

/// The gRPC service.
#[derive(Clone)]
pub struct RouterGrpc {
    models: Models,
}

impl RouterGrpc {
    /// A service over `models`.
    pub fn new(models: Models) -> Self {
        Self { models }
    }

    fn model(&self, name: &str) -> Result<&Arc<ModelState>, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument(format!(
                "model is required; this router serves: {}",
                self.models.names().join(", ")
            )));
        }
        self.models.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "model {name:?} is not served by this router; it serves: {}",
                self.models.names().join(", ")
            ))
        })
    }

    /// The model named `name`, when `client` may do `need` in its namespace
    /// (PERMISSION_DENIED otherwise, naming the grant that is missing).
    fn model_for(
        &self,
        client: &Client,
        name: &str,
        need: Need,
        call: &str,
    ) -> Result<&Arc<ModelState>, Status> {
        let model = self.model(name)?;
        require(client, &model.namespace, need, call)?;
        Ok(model)
    }

    /// The model and the sequence hashes a query names.
    fn resolve(
        &self,
        prefix: Option<PrefixQuery>,
    ) -> Result<(&Arc<ModelState>, Vec<u64>, u64), Status> {
        let prefix = prefix.ok_or_else(|| Status::invalid_argument("prefix is required"))?;
        let model = self.model(&prefix.model)?;
        let block_tokens = model.router.hasher().block_tokens();
        match (prefix.hashes.is_empty(), prefix.token_ids.is_empty()) {
            (false, false) => Err(Status::invalid_argument(
                "prefix: set either hashes or token_ids, not both",
            )),
            (true, true) => Err(Status::invalid_argument(
                "prefix: set hashes (sequence hashes of the full blocks) or token_ids",
            )),
            (false, true) => {
                if prefix.hashes.len() > MAX_QUERY_BLOCKS {
                    return Err(Status::invalid_argument(format!(
                        "prefix.hashes has {} entries; at most {MAX_QUERY_BLOCKS}",
                        prefix.hashes.len()
                    )));
                }
                let tokens = (prefix.hashes.len() * block_tokens) as u64;
                Ok((model, prefix.hashes, tokens))
            }
            (true, false) => {
                if prefix.token_ids.len() / block_tokens > MAX_QUERY_BLOCKS {
                    return Err(Status::invalid_argument(format!(
                        "prefix.token_ids holds {} full blocks; at most {MAX_QUERY_BLOCKS}",
                        prefix.token_ids.len() / block_tokens
                    )));
                }
                let hashes = model.router.hasher().sequence_hashes(&prefix.token_ids);
                Ok((model, hashes, prefix.token_ids.len() as u64))
            }
        }
    }

    fn lifecycle(model: &ModelState) -> Result<&Lifecycle, Status> {
        model.lifecycle.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this router runs without a cache server (--cache-server or --cluster): agent \
                 lifecycle calls have nowhere to go",
            )
        })
    }
}

fn worker_match(id: &str, overlap: &WorkerOverlap, available: bool) -> WorkerMatch {
    WorkerMatch {
        worker_id: id.to_string(),
        hbm_blocks: overlap.hbm_blocks,
        host_blocks: overlap.host_blocks,
        disk_blocks: overlap.disk_blocks,
        available,
    }
}

/// The status code's name, as the `code` label of the gRPC metrics spells it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn timed<T>(
    method: &'static str,
    started: Instant,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => "Ok",
        Err(s) => code_name(s.code()),
    };
    histogram!(m::GRPC_SECONDS, "method" => method, "code" => code)
        .record(started.elapsed().as_secs_f64());
    result
}

#[tonic::async_trait]
impl RouterService for RouterGrpc {
    async fn find_matches(
        &self,
        request: Request<FindMatchesRequest>,
    ) -> Result<Response<FindMatchesResponse>, Status> {
        let started = Instant::now();
        let client = Client::of(&request);
        let result = (|| {
            let mut request = request.into_inner();
            if let Some(prefix) = &request.prefix {
                // Which prefixes are cached is the namespace's business only.
                self.model_for(&client, &prefix.model, Need::Read, "FindMatches")?;
            }
            let (model, hashes, _) = self.resolve(request.prefix.take())?;
            let router = &model.router;
            let (matches, overlaps) = router
                .matches(&hashes)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let available = router.health().availability(&router.worker_ids());
            let workers = router
                .workers()
                .zip(&overlaps)
                .zip(available)
                .map(|((w, o), available)| worker_match(&w.worker_id, o, available))
                .collect();
            Ok(Response::new(FindMatchesResponse {
                query_blocks: hashes.len() as u32,
                workers,
                cache_prefix_blocks: matches.cache_prefix_blocks,
            }))
        })();
        timed("FindMatches", started, result)
    }

    async fn route(
        &self,
        request: Request<RouteRequest>,
    ) -> Result<Response<RouteResponse>, Status> {
        let started = Instant::now();
        let client = Client::of(&request);
        let result = (|| {
            let mut request = request.into_inner();
            if let Some(prefix) = &request.prefix {
                // A committed decision changes the agent's affinity: a write.
                let (need, call) = if request.commit {
                    (Need::Write, "Route with commit")
                } else {
                    (Need::Read, "Route")
                };
                self.model_for(&client, &prefix.model, need, call)?;
            }
            let (model, hashes, tokens) = self.resolve(request.prefix.take())?;
            let hints = request.hints.unwrap_or_default();
            if !(-8..=8).contains(&hints.priority) {
                return Err(Status::invalid_argument(format!(
                    "hints.priority is {}; it must be within -8..=8",
                    hints.priority
                )));
            }
            if !(0.0..=1.0).contains(&hints.latency_sensitivity) {
                return Err(Status::invalid_argument(format!(
                    "hints.latency_sensitivity is {}; it must be within 0.0..=1.0",
                    hints.latency_sensitivity
                )));
            }
            let route_hints = RouteHints {
                agent_id: (!hints.agent_id.is_empty()).then(|| hints.agent_id.clone()),
                priority: hints.priority,
                latency_sensitivity: hints.latency_sensitivity,
                osl: (hints.osl > 0).then_some(hints.osl),
            };
            let prompt_tokens = if request.prompt_tokens > 0 {
                u64::from(request.prompt_tokens)
            } else {
                tokens
            };
            let router = &model.router;
            let routed =
                router
                    .route(&hashes, prompt_tokens, &route_hints)
                    .map_err(|e| match e {
                        RouteError::NoWorker { .. } => Status::unavailable(e.to_string()),
                        RouteError::TooLong(_) => Status::invalid_argument(e.to_string()),
                    })?;
            if request.commit {
                if let Some(agent) = &route_hints.agent_id {
                    router.remember_affinity(agent, routed.worker);
                }
            }
            counter!(m::DECISIONS, "source" => "grpc", "reason" => routed.reason).increment(1);
            let worker = router.worker(routed.worker);
            let costs = routed
                .ranked
                .iter()
                .map(|c| {
                    let w = router.worker(c.worker);
                    WorkerCost {
                        worker_id: w.worker_id.clone(),
                        total: c.cost.total,
                        prefill_tokens: c.cost.prefill_tokens,
                        fetch_cost: c.cost.fetch_cost,
                        queue_cost: c.cost.queue_cost,
                        decode_cost: c.cost.decode_cost,
                        affinity: c.cost.affinity,
                        r#match: Some(worker_match(&w.worker_id, &c.overlap, true)),
                        overloaded: c.overloaded,
                    }
                })
                .collect();
            Ok(Response::new(RouteResponse {
                worker_id: worker.worker_id.clone(),
                endpoint: worker.http_base.clone(),
                costs,
                reason: routed.reason.to_string(),
            }))
        })();
        timed("Route", started, result)
    }

    async fn report_load(
        &self,
        request: Request<ReportLoadRequest>,
    ) -> Result<Response<ReportLoadResponse>, Status> {
        let client = Client::of(&request);
        let request = request.into_inner();
        // Load steers every later decision of the model: a write.
        let model = self.model_for(&client, &request.model, Need::Write, "ReportLoad")?;
        if !model
            .router
            .workers()
            .any(|w| w.worker_id == request.worker_id)
        {
            return Err(Status::not_found(format!(
                "worker {:?} is not a worker of model {:?}",
                request.worker_id, request.model
            )));
        }
        model.router.load_book().report(
            &request.worker_id,
            Load {
                queued_prefill_tokens: request.queued_prefill_tokens,
                active_decode_blocks: request.active_decode_blocks,
                running_requests: request.running_requests,
            },
        );
        Ok(Response::new(ReportLoadResponse {}))
    }

    async fn list_workers(
        &self,
        request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let client = Client::of(&request);
        let request = request.into_inner();
        let models: Vec<&Arc<ModelState>> = if request.model.is_empty() {
            // Every model the caller may read; the others are not listed.
            self.models
                .iter()
                .filter(|m| require(&client, &m.namespace, Need::Read, "ListWorkers").is_ok())
                .collect()
        } else {
            vec![self.model_for(&client, &request.model, Need::Read, "ListWorkers")?]
        };
        let mut workers = Vec::new();
        for model in models {
            let router = &model.router;
            for (i, w) in router.workers().enumerate() {
                let load = router.load(i);
                let index = router.index().read();
                let indexed_blocks = index
                    .worker_slot(&w.worker_id)
                    .map(|slot| index.worker_blocks(slot))
                    .unwrap_or(0);
                workers.push(WorkerInfo {
                    model: router.model().to_string(),
                    worker_id: w.worker_id.clone(),
                    endpoint: w.http_base.clone(),
                    available: router.health().is_available(&w.worker_id),
                    indexed_blocks,
                    queued_prefill_tokens: load.queued_prefill_tokens,
                    active_decode_blocks: load.active_decode_blocks,
                    running_requests: load.running_requests,
                    last_event_id: router.health().last_event_id(&w.worker_id),
                });
            }
        }
        Ok(Response::new(ListWorkersResponse { workers }))
    }

    async fn register_agent(
        &self,
        request: Request<RouterRegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        let client = Client::of(&request);
        let request = request.into_inner();
        let model = self.model_for(&client, &request.model, Need::Write, "RegisterAgent")?;
        let agent = AgentSpec {
            agent_id: request.agent_id,
            parent_agent_id: request.parent_agent_id,
            priority: request.priority,
            latency_sensitivity: request.latency_sensitivity,
            lease_ms: request.lease_ms,
        };
        Ok(Response::new(
            Self::lifecycle(model)?.register_agent(&agent).await?,
        ))
    }

    async fn hint(
        &self,
        request: Request<RouterHintRequest>,
    ) -> Result<Response<HintResponse>, Status> {
        let client = Client::of(&request);
        let request = request.into_inner();
        let model = self.model_for(&client, &request.model, Need::Write, "Hint")?;
        let blocks = match &request.prefix {
            Some(prefix) if !(prefix.hashes.is_empty() && prefix.token_ids.is_empty()) => {
                let prefix = PrefixQuery {
                    model: request.model.clone(),
                    ..prefix.clone()
                };
                self.resolve(Some(prefix))?.1
            }
            _ => Vec::new(),
        };
        let hint = HintRequest {
            session_id: String::new(),
            agent_id: request.agent_id,
            blocks,
            ending: request.ending,
            keep_warm_ms: request.keep_warm_ms,
            pin: request.pin,
        };
        Ok(Response::new(
            Self::lifecycle(model)?.hint(hint, None).await?,
        ))
    }

    async fn end_agent(
        &self,
        request: Request<RouterEndAgentRequest>,
    ) -> Result<Response<EndAgentResponse>, Status> {
        let client = Client::of(&request);
        let request = request.into_inner();
        let model = self.model_for(&client, &request.model, Need::Write, "EndAgent")?;
        Ok(Response::new(
            Self::lifecycle(model)?.end_agent(&request.agent_id).await?,
        ))
    }
}
