//! The models a router serves: [`ModelSpec`], `--models-file` (the JSON file
//! that lists them) and the checks every list passes.
//!
//! One model comes from the per-model flags (`--model`, `--namespace`,
//! `--worker`, …), several from a file
//! `{"models": [{"model": ..., "namespace": ..., "workers": [...], ...}, ...]}`
//! whose optional fields take the defaults of the flags of the same names
//! ([`DEFAULT_BLOCK_TOKENS`], [`DEFAULT_BLOCK_BYTES`], [`DEFAULT_KV_LAYOUT`],
//! the hashing crate's default seed, an empty salt, no tokenizer). Either way
//! the list passes [`validate`]: names and worker ids unique across models,
//! every model with a worker and a block size.
//!
//! A worker is written `ID=HTTP_BASE@AGENT_URL` ([`parse_worker`]); the
//! messages name `--worker` and `--models-file`, the flags they come from.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use kvtier_proto::hashing::DEFAULT_SEED;

use crate::routing::WorkerEndpoint;

/// Tokens per block when a model does not say.
pub const DEFAULT_BLOCK_TOKENS: u32 = 16;
/// Bytes per block (the namespace's `HashingConfig.block_bytes`) when a model
/// does not say.
pub const DEFAULT_BLOCK_BYTES: u64 = 65_536;
/// KV layout descriptor (the namespace's `HashingConfig.kv_layout`) when a
/// model does not say.
pub const DEFAULT_KV_LAYOUT: &str = "sim:layers=1,kv=2";

/// One model the router serves: the per-model flags, or one entry of
/// `--models-file`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The `model` field of requests; also the namespace's `HashingConfig.model`.
    pub model: String,
    /// Cache-server namespace of the model (as the workers attach it).
    pub namespace: String,
    /// Its workers, each `ID=HTTP_BASE@AGENT_URL`; empty strings are skipped
    /// (an empty environment variable gives one).
    pub workers: Vec<String>,
    /// The model's tokenizer.json; None: the HTTP front answers 503 for the
    /// model, gRPC queries by hash work.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Chat template: a Jinja file or a tokenizer_config.json; None: ChatML.
    #[serde(default)]
    pub chat_template: Option<PathBuf>,
    /// Tokens per block (default [`DEFAULT_BLOCK_TOKENS`]).
    #[serde(default = "default_block_tokens")]
    pub block_tokens: u32,
    /// Base XXH3 seed (default the hashing crate's `DEFAULT_SEED`).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Namespace salt (default empty).
    #[serde(default)]
    pub salt: String,
    /// Bytes per block (default [`DEFAULT_BLOCK_BYTES`]).
    #[serde(default = "default_block_bytes")]
    pub block_bytes: u64,
    /// KV layout descriptor (default [`DEFAULT_KV_LAYOUT`]).
    #[serde(default = "default_kv_layout")]
    pub kv_layout: String,
}

impl ModelSpec {
    /// The model's workers, parsed; empty entries skipped.
    pub fn endpoints(&self) -> Result<Vec<WorkerEndpoint>, WorkerSpecError> {
        self.workers
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| parse_worker(s))
            .collect()
    }
}

fn default_block_tokens() -> u32 {
    DEFAULT_BLOCK_TOKENS
}
fn default_seed() -> u64 {
    DEFAULT_SEED
}
fn default_block_bytes() -> u64 {
    DEFAULT_BLOCK_BYTES
}
fn default_kv_layout() -> String {
    DEFAULT_KV_LAYOUT.to_string()
}

/// `--models-file`'s shape.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    models: Vec<ModelSpec>,
}

/// A worker that is not `ID=HTTP_BASE@AGENT_URL`.
#[derive(Debug, thiserror::Error)]
pub enum WorkerSpecError {
    /// No `=` or no `@`.
    #[error("--worker {0:?}: expected ID=HTTP_BASE@AGENT_URL")]
    Shape(String),
    /// An empty id or agent URL, or a base that is not http(s).
    #[error("--worker {0:?}: expected ID=HTTP_BASE@AGENT_URL with an http(s) base URL")]
    Parts(String),
}

/// A models file that cannot be read, or a list of models that is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ModelsFileError {
    /// The file cannot be read.
    #[error("read --models-file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the JSON described above.
    #[error("parse --models-file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The file lists no model.
    #[error("--models-file {}: \"models\" is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A model with an empty name, or a name given twice.
    #[error("model {0:?}: names must be non-empty and unique")]
    Name(String),
    /// A model with `block_tokens` 0.
    #[error("model {0:?}: block_tokens must be > 0")]
    BlockTokens(String),
    /// A model with no worker.
    #[error("model {0:?}: no worker given; the router needs at least one per model")]
    NoWorker(String),
    /// A worker that does not parse.
    #[error(transparent)]
    Worker(#[from] WorkerSpecError),
    /// A worker id given twice, in one model or in two.
    #[error("worker {0:?} is listed twice (worker ids are unique across models)")]
    DuplicateWorker(String),
}

/// Parses a worker, `ID=HTTP_BASE@AGENT_URL` (e.g.
/// `worker-0=http://10.0.0.5:8000@http://10.0.0.5:50061`); a trailing `/` of
/// the base is dropped.
pub fn parse_worker(spec: &str) -> Result<WorkerEndpoint, WorkerSpecError> {
    let shape = || WorkerSpecError::Shape(spec.to_string());
    let (id, rest) = spec.split_once('=').ok_or_else(shape)?;
    let (http_base, agent_url) = rest.rsplit_once('@').ok_or_else(shape)?;
    if id.is_empty() || !http_base.starts_with("http") || agent_url.is_empty() {
        return Err(WorkerSpecError::Parts(spec.to_string()));
    }
    Ok(WorkerEndpoint {
        worker_id: id.to_string(),
        http_base: http_base.trim_end_matches('/').to_string(),
        agent_url: agent_url.to_string(),
    })
}

/// The models a `--models-file` lists (at least one), not yet [`validate`]d.
pub fn read(path: &Path) -> Result<Vec<ModelSpec>, ModelsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelsFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: ModelsFile =
        serde_json::from_str(&text).map_err(|source| ModelsFileError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    if file.models.is_empty() {
        return Err(ModelsFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(file.models)
}

/// Checks a list of models: names non-empty and unique, `block_tokens` > 0,
/// at least one worker each, every worker parses, worker ids unique across
/// models.
pub fn validate(specs: &[ModelSpec]) -> Result<(), ModelsFileError> {
    let mut names = HashSet::new();
    let mut worker_ids = HashSet::new();
    for spec in specs {
        if spec.model.is_empty() || !names.insert(spec.model.as_str()) {
            return Err(ModelsFileError::Name(spec.model.clone()));
        }
        if spec.block_tokens == 0 {
            return Err(ModelsFileError::BlockTokens(spec.model.clone()));
        }
        if spec.workers.iter().all(|w| w.is_empty()) {
            return Err(ModelsFileError::NoWorker(spec.model.clone()));
        }
        for worker in spec.workers.iter().filter(|w| !w.is_empty()) {
            let id = parse_worker(worker)?.worker_id;
            if !worker_ids.insert(id.clone()) {
                return Err(ModelsFileError::DuplicateWorker(id));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `json` as a models file, reads and validates it.
    fn load(json: &str) -> Result<Vec<ModelSpec>, ModelsFileError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("models.json");
        std::fs::write(&path, json).expect("write");
        let specs = read(&path)?;
        validate(&specs)?;
        Ok(specs)
    }

    #[test]
    fn a_models_file_gives_each_model_its_fields_and_the_flags_defaults() {
        let specs = load(
            r#"{"models": [
                {"model": "a", "namespace": "na", "workers": ["w0=http://h:1@http://g:2"]},
                {"model": "b", "namespace": "nb", "block_tokens": 32,
                 "workers": ["w1=http://h:3@http://g:4"]}
            ]}"#,
        )
        .expect("valid");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].block_tokens, DEFAULT_BLOCK_TOKENS);
        assert_eq!(specs[0].kv_layout, DEFAULT_KV_LAYOUT);
        assert_eq!(specs[1].block_tokens, 32);
        assert_eq!(specs[1].namespace, "nb");
    }

    #[test]
    fn bad_models_files_are_refused_with_the_reason() {
        for (json, expected) in [
            (r#"{"models": []}"#, "is empty"),
            (
                r#"{"models": [{"model": "a", "namespace": "n", "workers": ["w0=http://h:1@http://g:2"]},
                               {"model": "a", "namespace": "m", "workers": ["w1=http://h:1@http://g:2"]}]}"#,
                "unique",
            ),
            (
                r#"{"models": [{"model": "a", "namespace": "n", "workers": ["w0=http://h:1@http://g:2"]},
                               {"model": "b", "namespace": "m", "workers": ["w0=http://h:3@http://g:4"]}]}"#,
                "listed twice",
            ),
            (
                r#"{"models": [{"model": "a", "namespace": "n", "workers": []}]}"#,
                "no worker",
            ),
            (
                r#"{"models": [{"model": "a", "namespace": "n", "workers": ["w0"], "x": 1}]}"#,
                "unknown field",
            ),
            (
                r#"{"models": [{"model": "a", "workers": ["w0"]}]}"#,
                "namespace",
            ),
        ] {
            let error = kvtier_process::report::describe(&load(json).expect_err(json));
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn a_worker_is_id_equals_http_base_at_agent_url() {
        let w = parse_worker("w0=http://h:1/@unix:/run/agent.sock").expect("valid");
        assert_eq!(w.worker_id, "w0");
        assert_eq!(w.http_base, "http://h:1");
        assert_eq!(w.agent_url, "unix:/run/agent.sock");
        for bad in [
            "w0",
            "w0=http://h:1",
            "=http://h:1@g",
            "w0=h:1@g",
            "w0=http://h:1@",
        ] {
            assert!(parse_worker(bad).is_err(), "{bad}");
        }
    }
}
