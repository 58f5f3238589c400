//! `RegisterAgent`, `Hint`, `EndAgent`: validate, then hand over to the
//! [`crate::agents::AgentBook`].
//!
//! These calls change the eviction order for every client of the namespace
//! (a pin, a short keep-warm, an early end), so they need write access to it;
//! an agent belongs to the token that registered it; leases are capped
//! (`--max-agent-lease-ms`) and so is the number of live agents per namespace
//! (`--max-agents-per-namespace`).

use tonic::{Code, Request, Status};

use kvtier_policy::{AgentSpec, Answer, CallEnd, LifecycleError};
use kvtier_proto::v1::{
    CallEnding, EndAgentRequest, EndAgentResponse, HintRequest, HintResponse, RegisterAgentRequest,
    RegisterAgentResponse,
};

use super::session::Need;
use super::{ServiceState, MAX_HASHES_PER_REQUEST};
use crate::agents::{call_end, AgentError, AgentRef};
use crate::namespace::Namespace;
use kvtier_security::Client;

const MAX_AGENT_ID_BYTES: usize = 256;

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_AGENT_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field} must be 1 to {MAX_AGENT_ID_BYTES} bytes, got {}",
            id.len()
        )));
    }
    Ok(())
}

/// Maps the book's refusals to statuses; `agent` is the client's id for the message.
fn lifecycle_status(agent: &str, err: AgentError) -> Status {
    let err = match err {
        AgentError::Lifecycle(e) => e,
        e @ AgentError::NotOwner { .. } => return Status::permission_denied(e.to_string()),
        e @ AgentError::TooManyAgents { .. } => return Status::resource_exhausted(e.to_string()),
    };
    let msg = format!("agent {agent:?}: {err}");
    match err {
        LifecycleError::UnknownAgent(_) => Status::not_found(msg),
        LifecycleError::UnknownParent { .. } => Status::failed_precondition(msg),
        LifecycleError::ParentCycle(_)
        | LifecycleError::ZeroLease(_)
        | LifecycleError::BadLatencySensitivity { .. } => Status::invalid_argument(msg),
        LifecycleError::Conflict(_) => Status::already_exists(msg),
        LifecycleError::PinQuotaExceeded { .. } => Status::resource_exhausted(msg),
    }
}

/// Resolves the session a lifecycle request names (write access to its
/// namespace needed) and hands back the caller's principal name and the body.
fn session_and_body<T>(
    state: &ServiceState,
    request: Request<T>,
    method: &str,
    session_id: fn(&T) -> &String,
) -> Result<(Namespace, Option<String>, T), Status> {
    let client = Client::of(&request);
    let id = session_id(request.get_ref());
    let ns = match state
        .sessions
        .resolve(id, request.metadata(), &client, Need::Write)
    {
        Ok(ns) => ns,
        Err(st) if st.code() == Code::PermissionDenied => {
            // A reader of the namespace: say what it lacks and how to get it.
            return Err(
                match state
                    .sessions
                    .resolve(id, request.metadata(), &client, Need::Read)
                {
                    Ok(ns) => Status::permission_denied(format!(
                        "{method} changes the eviction order for every client of namespace \
                         '{name}', so it needs write access, and this token may only read it: \
                         grant the token `{name}=rw` in the server's token file (or send \
                         lifecycle calls with a token that has it)",
                        name = ns.name
                    )),
                    Err(_) => st,
                },
            );
        }
        Err(st) => return Err(st),
    };
    let caller = client.principal.as_ref().map(|p| p.name.to_string());
    Ok((ns, caller, request.into_inner()))
}

pub(super) fn register(
    state: &ServiceState,
    request: Request<RegisterAgentRequest>,
) -> Result<RegisterAgentResponse, Status> {
    let (ns, caller, r) = session_and_body(state, request, "RegisterAgent", |r| &r.session_id)?;
    check_id("agent_id", &r.agent_id)?;
    if !r.parent_agent_id.is_empty() {
        check_id("parent_agent_id", &r.parent_agent_id)?;
    }
    if !(-8..=8).contains(&r.priority) {
        return Err(Status::invalid_argument(format!(
            "priority must be between -8 and 8, got {}",
            r.priority
        )));
    }
    let max = state.agents.max_lease_ms();
    let lease_ms = match r.lease_ms {
        Some(ms) if ms > max => {
            return Err(Status::invalid_argument(format!(
                "lease_ms {ms} is over this server's cap of {max} ms (--max-agent-lease-ms); \
                 ask for at most {max}: every Hint renews the lease"
            )))
        }
        Some(ms) => ms,
        None => AgentSpec::DEFAULT_LEASE_MS.min(max),
    };
    let who = AgentRef {
        namespace: ns.id,
        namespace_name: &ns.name,
        agent: &r.agent_id,
        caller: caller.as_deref(),
    };
    let parent = (!r.parent_agent_id.is_empty()).then_some(r.parent_agent_id.as_str());
    let created = state
        .agents
        .register(&who, parent, r.priority, r.latency_sensitivity, lease_ms)
        .map_err(|e| lifecycle_status(&r.agent_id, e))?;
    Ok(RegisterAgentResponse { created, lease_ms })
}

pub(super) fn hint(
    state: &ServiceState,
    request: Request<HintRequest>,
) -> Result<HintResponse, Status> {
    let (ns, caller, r) = session_and_body(state, request, "Hint", |r| &r.session_id)?;
    check_id("agent_id", &r.agent_id)?;
    if r.blocks.len() > MAX_HASHES_PER_REQUEST {
        return Err(Status::invalid_argument(format!(
            "Hint: {} blocks; the limit is {MAX_HASHES_PER_REQUEST}",
            r.blocks.len()
        )));
    }
    let ending = call_end(r.ending);
    if CallEnding::try_from(r.ending).is_err() {
        return Err(Status::invalid_argument(format!(
            "unknown ending {}: use CALL_ENDING_TOOL_CALL, CALL_ENDING_END_OF_TURN or leave it unset",
            r.ending
        )));
    }
    let answered = ending != CallEnd::Unknown || r.keep_warm_ms.is_some() || r.pin;
    if r.blocks.is_empty() && !answered {
        return Err(Status::invalid_argument(
            "empty hint: send the call's blocks when it arrives, and/or its ending once answered",
        ));
    }
    let who = AgentRef {
        namespace: ns.id,
        namespace_name: &ns.name,
        agent: &r.agent_id,
        caller: caller.as_deref(),
    };
    let mut resident = 0;
    if !r.blocks.is_empty() {
        resident = state
            .agents
            .call(&who, &r.blocks)
            .map_err(|e| lifecycle_status(&r.agent_id, e))?;
    }
    if answered {
        let answer = Answer {
            ended: ending,
            keep_warm_ms: r.keep_warm_ms,
            pin: r.pin,
        };
        state
            .agents
            .answered(&who, answer)
            .map_err(|e| lifecycle_status(&r.agent_id, e))?;
    }
    Ok(HintResponse {
        resident_blocks: resident as u32,
    })
}

pub(super) fn end(
    state: &ServiceState,
    request: Request<EndAgentRequest>,
) -> Result<EndAgentResponse, Status> {
    let (ns, caller, r) = session_and_body(state, request, "EndAgent", |r| &r.session_id)?;
    check_id("agent_id", &r.agent_id)?;
    let who = AgentRef {
        namespace: ns.id,
        namespace_name: &ns.name,
        agent: &r.agent_id,
        caller: caller.as_deref(),
    };
    let ended = state
        .agents
        .end(&who)
        .map_err(|e| lifecycle_status(&r.agent_id, e))?;
    Ok(EndAgentResponse {
        ended: ended as u32,
    })
}
