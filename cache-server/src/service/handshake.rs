//! `Handshake`: check the client's hashing configuration, open a session.

use tonic::Status;

use kvtier_proto::v1::{HandshakeRequest, HandshakeResponse};
use kvtier_security::Client;

use super::ServiceState;
use crate::metrics as m;
use crate::namespace::{forbidden_message, NamespaceError};

/// With authentication on, the caller's grants decide: some access to open a
/// session, write access to create the namespace. Refusals carry one message
/// whether the namespace exists or not. In a cluster the configuration is
/// checked against (or created in) etcd first ([`crate::cluster`]).
pub(super) async fn handle(
    state: &ServiceState,
    client: &Client,
    request: HandshakeRequest,
) -> Result<HandshakeResponse, Status> {
    let name = request.namespace.clone();
    let tenant = match &client.principal {
        None => None,
        Some(p) => {
            let access = p.access(&name);
            let may_create = access.write;
            if !access.any() || (!may_create && state.namespaces.get(&name).is_none()) {
                tracing::warn!(namespace = %name, principal = %p.name, "handshake denied");
                metrics::counter!(m::HANDSHAKES, "result" => "denied").increment(1);
                return Err(Status::permission_denied(forbidden_message(&name)));
            }
            Some(p.tenant.as_str())
        }
    };
    let cluster_check = match &state.cluster {
        Some(cluster) => {
            cluster
                .check_namespace(&state.namespaces, &name, request.config.as_ref(), tenant)
                .await
        }
        None => Ok(()),
    };
    let outcome = cluster_check.and_then(|()| {
        state
            .namespaces
            .handshake_as(&name, request.config, tenant, state.store.disk())
    });
    let (namespace, created) = match outcome {
        Ok(ok) => ok,
        Err(err) => {
            let (result, status) = match &err {
                NamespaceError::Invalid(_) => {
                    ("invalid", Status::invalid_argument(err.to_string()))
                }
                NamespaceError::Mismatch(_) => {
                    ("mismatch", Status::failed_precondition(err.to_string()))
                }
                NamespaceError::Forbidden(_) => {
                    ("denied", Status::permission_denied(err.to_string()))
                }
                NamespaceError::NotAllowed { .. } => {
                    ("unknown", Status::not_found(err.to_string()))
                }
                NamespaceError::Storage(_) => ("error", Status::internal(err.to_string())),
                NamespaceError::Unavailable(_) => {
                    ("unavailable", Status::unavailable(err.to_string()))
                }
            };
            tracing::warn!(namespace = %name, client = %request.client_name, error = %err, "handshake refused");
            metrics::counter!(m::HANDSHAKES, "result" => result).increment(1);
            return Err(status);
        }
    };
    metrics::counter!(m::HANDSHAKES, "result" => "ok").increment(1);
    if created {
        tracing::info!(namespace = %name, config = %crate::namespace::describe(&namespace.config), "namespace created");
    }
    let response = HandshakeResponse {
        session_id: String::new(),
        config: Some(namespace.config.clone()),
        effective_seed: namespace.effective_seed,
        created,
        max_message_bytes: state.max_message_bytes,
    };
    let session_id = state.sessions.open(namespace, client.principal.clone());
    Ok(HandshakeResponse {
        session_id,
        ..response
    })
}
