//! Errors of the agent library and how they reach gRPC clients.

use tonic::{Code, Status};

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A request is malformed (bad block id, mismatched lengths, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The engine's hashing configuration differs from the agent's or the server's.
    #[error("hashing configuration mismatch: {0}")]
    ConfigMismatch(String),
    /// No pool attached, or the request names an older attachment.
    #[error("no such pool: {0}")]
    NoPool(String),
    /// The engine asked to attach a file the agent may not touch (outside its
    /// pool directory, a symbolic link, not a regular file, another owner).
    #[error("pool refused: {0}")]
    PoolRefused(String),
    /// The pool's memory could not be reached (mapping, CUDA IPC, ...).
    #[error("pool memory: {0}")]
    Memory(String),
    /// The cache server refused a call or could not be reached.
    #[error("cache tier: {0}")]
    Tier(Status),
    /// The cache server's data plane refused a request or failed.
    #[error("cache tier data plane: {0}")]
    DataPlane(String),
    /// A call to the cache server took longer than allowed.
    #[error("cache tier did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The `cuda` feature path failed (library absent, driver error, ...).
    #[error("cuda: {0}")]
    Cuda(String),
    /// A listener cannot be set up (socket in use, TLS files, the plaintext rule).
    #[error("listener: {0}")]
    Listener(String),
    /// I/O error (binding, files).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Self {
        let msg = e.to_string();
        match e {
            AgentError::InvalidRequest(_) => Status::invalid_argument(msg),
            AgentError::ConfigMismatch(_) => Status::failed_precondition(msg),
            AgentError::NoPool(_) => Status::failed_precondition(msg),
            AgentError::PoolRefused(_) => Status::permission_denied(msg),
            AgentError::Memory(_) | AgentError::Cuda(_) => Status::failed_precondition(msg),
            AgentError::Tier(s) => match s.code() {
                // A refusal by the server keeps its code; transport trouble is UNAVAILABLE.
                Code::FailedPrecondition | Code::InvalidArgument | Code::ResourceExhausted => {
                    Status::new(s.code(), format!("cache tier: {}", s.message()))
                }
                _ => Status::unavailable(msg),
            },
            AgentError::DataPlane(_) => Status::unavailable(msg),
            AgentError::Timeout(_) => Status::deadline_exceeded(msg),
            AgentError::Io(_) | AgentError::Listener(_) => Status::internal(msg),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
