//! kvtier-prompt: what a model call is, whichever API it came through.
//!
//! Parses the three request shapes (OpenAI `/v1/chat/completions`, OpenAI
//! `/v1/responses`, Anthropic `/v1/messages`) into one [`ModelCall`] with its
//! agent hints, renders the model's chat template, tokenizes with the model's
//! `tokenizer.json`, and hashes full blocks exactly as the workers do.
