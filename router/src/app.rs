//! What the router's services share: the models it serves.

use std::sync::Arc;

use kvtier_prompt::PromptModel;

use crate::lifecycle::Lifecycle;
use crate::routing::ModelRouter;

/// One model the router serves.
pub struct ModelState {
    /// The model's cache-server namespace: the unit of access on the router's
    /// fronts (a token's grants name namespaces, as on the cache server).
    pub namespace: String,
    /// Placement.
    pub router: ModelRouter,
    /// Template and tokenizer (the HTTP front and token-id queries need them;
    /// hash queries do not).
    pub prompt: Option<PromptModel>,
    /// The cache's lifecycle API for the model's namespace: one server's or
    /// every cluster member's (None when the router runs without a cache).
    pub lifecycle: Option<Arc<Lifecycle>>,
}

/// The models served.
#[derive(Clone, Default)]
pub struct Models {
    models: Vec<Arc<ModelState>>,
}

impl Models {
    /// Adds a model.
    pub fn push(&mut self, model: ModelState) {
        self.models.push(Arc::new(model));
    }

    /// The model named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ModelState>> {
        self.models.iter().find(|m| m.router.model() == name)
    }

    /// All models.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModelState>> {
        self.models.iter()
    }

    /// Names of the models, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.router.model()).collect()
    }
}
