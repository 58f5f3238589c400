//! [`PromptModel`]: chat template (minijinja, HF-compatible) + tokenizer + block hasher.

use std::path::Path;

use kvtier_proto::hashing::BlockHasher;
use minijinja::{Environment, ErrorKind, Value as JValue};
use serde_json::Value;

use crate::{ApiError, ModelCall, PromptError};

/// The built-in template: ChatML (`<|im_start|>role\ncontent<|im_end|>\n`),
/// tools listed in the system turn, and the `<|im_start|>assistant\n`
/// generation prompt. Each turn is a pure function of its message, so a
/// conversation that extends the previous one renders to a text that extends
/// the previous text.
pub const DEFAULT_CHAT_TEMPLATE: &str = concat!(
    "{%- set ns = namespace(start=0) -%}",
    "{%- if tools -%}",
    "{{- '<|im_start|>system\\n' -}}",
    "{%- if messages and messages[0].role == 'system' -%}",
    "{{- messages[0].content + '\\n\\n' -}}{%- set ns.start = 1 -%}",
    "{%- endif -%}",
    "{{- '# Tools\\n\\n<tools>\\n' -}}",
    "{%- for tool in tools -%}{{- tool | tojson -}}{{- '\\n' -}}{%- endfor -%}",
    "{{- '</tools><|im_end|>\\n' -}}",
    "{%- endif -%}",
    "{%- for message in messages[ns.start:] -%}",
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
);

const TEMPLATE_NAME: &str = "chat";

/// Chat template + tokenizer + block hasher of one model.
///
/// Rendering follows Hugging Face's `apply_chat_template`: Jinja with
/// `trim_blocks` and `lstrip_blocks`, variables `messages` (role, content),
/// `tools` (OpenAI function format `{"type":"function","function":{name,
/// description, parameters}}` whichever API the tools came in, so that e.g. an
/// Anthropic `cache_control` moving between tools does not change the prompt),
/// `add_generation_prompt = true`, `bos_token` / `eos_token` (from the
/// `tokenizer_config.json` the template came from, else empty), and the
/// helpers `raise_exception(msg)`, `strftime_now(fmt)` (UTC), a Python-style
/// `tojson` and Python string/dict methods (`.strip()`, `.items()`, ...).
/// The rendered text is tokenized without adding special tokens again (the
/// template writes them).
pub struct PromptModel {
    tokenizer: tokenizers::Tokenizer,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    hasher: BlockHasher,
}

impl std::fmt::Debug for PromptModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptModel")
            .field("block_tokens", &self.hasher.block_tokens())
            .field("seed", &self.hasher.seed())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, PromptError> {
    std::fs::read_to_string(path).map_err(|source| PromptError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A special-token entry of tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// (template source, bos, eos) of a template file: a `tokenizer_config.json`
/// (its `chat_template`: a string, or a list of `{name, template}` where
/// "default" wins, else the first) or a raw Jinja template.
fn load_template(path: &Path) -> Result<(String, String, String), PromptError> {
    let text = read(path)?;
    let as_json = serde_json::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object);
    let Some(config) = as_json else {
        return Ok((text, String::new(), String::new()));
    };
    let where_ = path.display();
    let template = match config.get("chat_template") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(list)) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    PromptError::Invalid(format!("{where_}: chat_template list has no template"))
                })?
                .to_string()
        }
        _ => {
            return Err(PromptError::Invalid(format!(
                "{where_}: a JSON file without a string `chat_template` field"
            )))
        }
    };
    Ok((
        template,
        token_string(config.get("bos_token")),
        token_string(config.get("eos_token")),
    ))
}

/// Python `json.dumps(v, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`
/// (the `tojson` of transformers' chat templates).
fn python_json(v: &Value, indent: Option<usize>, sort_keys: bool, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                python_json(item, indent, sort_keys, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            let mut entries: Vec<_> = map.iter().collect();
            if sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, sort_keys, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(value: JValue, kwargs: minijinja::value::Kwargs) -> Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A small `strftime` of the current UTC time (%Y %y %m %d %B %b %H %M %S %%),
/// enough for the date lines of Llama-style templates.
fn strftime_now(format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Tools in the OpenAI chat `{"type":"function","function":{...}}` form that HF
/// templates expect (from chat `{type, function}`, Responses `{type, name,
/// description, parameters}` or Anthropic `{name, description, input_schema}`);
/// anything else is passed through.
pub(crate) fn normalize_tools(tools: &Value) -> Value {
    let Value::Array(list) = tools else {
        return tools.clone();
    };
    let norm = |tool: &Value| -> Value {
        let Value::Object(t) = tool else {
            return tool.clone();
        };
        if let Some(Value::Object(_)) = t.get("function") {
            return serde_json::json!({ "type": "function", "function": t["function"].clone() });
        }
        let Some(name) = t.get("name") else {
            return tool.clone();
        };
        let mut f = serde_json::Map::new();
        f.insert("name".into(), name.clone());
        if let Some(d) = t.get("description") {
            f.insert("description".into(), d.clone());
        }
        if let Some(p) = t.get("parameters").or_else(|| t.get("input_schema")) {
            f.insert("parameters".into(), p.clone());
        }
        serde_json::json!({ "type": "function", "function": Value::Object(f) })
    };
    Value::Array(list.iter().map(norm).collect())
}

impl PromptModel {
    /// Loads `tokenizer.json`, and the chat template from a file (a Jinja
    /// template, or a `tokenizer_config.json` with a `chat_template` field);
    /// None uses the built-in ChatML template ([`DEFAULT_CHAT_TEMPLATE`]).
    /// `block_tokens` and `effective_seed` are the namespace's hashing.
    pub fn load(
        tokenizer_json: &Path,
        chat_template: Option<&Path>,
        block_tokens: usize,
        effective_seed: u64,
    ) -> Result<Self, PromptError> {
        if block_tokens == 0 {
            return Err(PromptError::Invalid("block_tokens must be > 0".into()));
        }
        let bytes = std::fs::read(tokenizer_json).map_err(|source| PromptError::Io {
            path: tokenizer_json.display().to_string(),
            source,
        })?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            PromptError::Invalid(format!(
                "{}: not a tokenizer.json: {e}",
                tokenizer_json.display()
            ))
        })?;
        let (source, bos_token, eos_token) = match chat_template {
            Some(path) => load_template(path)?,
            None => (
                DEFAULT_CHAT_TEMPLATE.to_string(),
                String::new(),
                String::new(),
            ),
        };
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| PromptError::Invalid(format!("template syntax: {e}")))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<JValue, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_filter("tojson", tojson);
        let what = chat_template.map_or_else(
            || "built-in template".to_string(),
            |p| p.display().to_string(),
        );
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| PromptError::Invalid(format!("{what}: invalid chat template: {e}")))?;
        Ok(Self {
            tokenizer,
            env,
            bos_token,
            eos_token,
            hasher: BlockHasher::new(block_tokens, effective_seed),
        })
    }

    /// The rendered prompt text of a call (a template error is a 400 naming the template's complaint).
    pub fn render(&self, call: &ModelCall) -> Result<String, ApiError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ApiError::internal(format!("chat template: {e}")))?;
        let tools = call.tools.as_ref().map(normalize_tools);
        let ctx = minijinja::context! {
            messages => JValue::from(minijinja::value::Serde(&call.messages)),
            tools => tools.as_ref().map(|t| JValue::from(minijinja::value::Serde(t))),
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        template.render(ctx).map_err(|e| {
            let mut msg = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            if e.kind() != ErrorKind::InvalidOperation {
                msg = e.to_string();
            }
            ApiError::invalid(format!(
                "messages: the model's chat template refused the conversation: {msg}"
            ))
        })
    }

    /// Token ids of the rendered prompt (no special tokens added beyond the template's).
    pub fn prompt_tokens(&self, call: &ModelCall) -> Result<Vec<u32>, ApiError> {
        self.encode(&self.render(call)?)
    }

    /// Sequence hashes of the full blocks of `tokens` (a trailing partial block is ignored).
    pub fn block_hashes(&self, tokens: &[u32]) -> Vec<u64> {
        self.hasher.sequence_hashes(tokens)
    }

    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        self.hasher.block_tokens()
    }

    /// Token ids of a text (no template, no special tokens added), e.g. to count output tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| ApiError::internal(format!("tokenizer: {e}")))
    }

    /// Text of token ids (special tokens kept), e.g. to produce output text.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, ApiError> {
        self.tokenizer
            .decode(tokens, false)
            .map_err(|e| ApiError::internal(format!("tokenizer: {e}")))
    }

    /// The block hasher (block size and effective seed).
    pub fn hasher(&self) -> BlockHasher {
        self.hasher
    }
}

#[cfg(test)]
pub(crate) fn civil_from_days_for_tests(days: i64) -> (i64, u32, u32) {
    civil_from_days(days)
}
