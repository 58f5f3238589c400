//! `Handshake`: check the client's hashing configuration, open a session.

use tonic::Status;

use kvtier_proto::v1::{HandshakeRequest, HandshakeResponse};

use super::ServiceState;
use crate::metrics as m;
use crate::namespace::NamespaceError;

pub(super) fn handle(
    state: &ServiceState,
    request: HandshakeRequest,
) -> Result<HandshakeResponse, Status> {
    let name = request.namespace.clone();
    let outcome = state
        .namespaces
        .handshake(&name, request.config, state.store.disk());
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
                NamespaceError::NotAllowed { .. } => {
                    ("unknown", Status::not_found(err.to_string()))
                }
                NamespaceError::Storage(_) => ("error", Status::internal(err.to_string())),
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
    let session_id = state.sessions.open(namespace);
    Ok(HandshakeResponse {
        session_id,
        ..response
    })
}
