//! The OpenAI wire format: requests (validated into a `GenRequest`), responses,
//! and OpenAI-shaped errors.
//!
//! Requests are parsed from raw bytes by hand-rolled checks on a
//! `serde_json::Value`, so every problem gets a message that names the field
//! (`param`) instead of serde's generic text, and unknown fields are ignored
//! as OpenAI's API does.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use specdec_engine::sampler::SamplingParams;

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
            retry_after: None,
        }
    }
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: Some(code), retry_after: None }
    }
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}

/// Largest `stop` list and stop string.
pub const MAX_STOP: usize = 4;
pub const MAX_STOP_BYTES: usize = 256;
/// Most chat messages per request.
pub const MAX_MESSAGES: usize = 4096;
/// Longest draft a request may ask for.
pub const MAX_DRAFT: usize = 64;

/// The prompt as text (rendered for chat) or token ids.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A validated generation request, either endpoint.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub chat: bool,
    pub prompt: Prompt,
    /// None: up to the context limit.
    pub max_tokens: Option<usize>,
    pub params: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Speculation for this request (the `specdec` extension field).
    pub speculate: bool,
    pub draft_max: Option<usize>,
    pub echo: bool,
}

fn num(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(key, "must be a finite number")),
        Some(_) => Err(ApiError::invalid(key, format!("'{key}' must be a number"))),
    }
}

fn ranged(o: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    let v = num(o, key)?;
    if let Some(x) = v {
        if !(lo..=hi).contains(&x) {
            return Err(ApiError::invalid(key, format!("'{key}' must be in [{lo}, {hi}], got {x}")));
        }
    }
    Ok(v)
}

fn int(o: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::invalid(key, format!("'{key}' must be an integer in [{lo}, {hi}], got {n}"))),
        },
        Some(_) => Err(ApiError::invalid(key, format!("'{key}' must be an integer"))),
    }
}

fn boolean(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(key, format!("'{key}' must be a boolean"))),
    }
}

/// Parses a body into a JSON object, with OpenAI-shaped errors for bad bytes.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid("body", format!("request body is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::invalid("body", "request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid("body", format!("request body is not valid JSON: {e}"))),
    }
}

/// Validates the fields both endpoints share. `vocab` bounds token ids.
pub fn parse_common(o: &Map<String, Value>, chat: bool, vocab: usize) -> Result<GenRequest, ApiError> {
    // OpenAI's default temperature is 1; ours follows it.
    let mut params =
        SamplingParams { temperature: ranged(o, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32, ..Default::default() };
    if let Some(p) = ranged(o, "top_p", 0.0, 1.0)? {
        if p == 0.0 {
            return Err(ApiError::invalid("top_p", "'top_p' must be in (0, 1]"));
        }
        params.top_p = p as f32;
    }
    params.top_k = int(o, "top_k", 0, vocab as u64)?.unwrap_or(0) as usize;
    params.min_p = ranged(o, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32;
    if let Some(r) = ranged(o, "repetition_penalty", 0.01, 10.0)? {
        params.repeat_penalty = r as f32;
    }
    for key in ["presence_penalty", "frequency_penalty"] {
        if let Some(v) = ranged(o, key, -2.0, 2.0)? {
            if v != 0.0 {
                return Err(ApiError::invalid(key, format!("'{key}' is not supported (use repetition_penalty)")));
            }
        }
    }
    // Any 64-bit integer; negative seeds (some clients send -1) wrap.
    match o.get("seed") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some() || n.as_i64().is_some() => {
            params.seed = n.as_u64().unwrap_or_else(|| n.as_i64().unwrap_or(0) as u64);
        }
        Some(_) => return Err(ApiError::invalid("seed", "'seed' must be a 64-bit integer")),
    }
    let max_key = if chat && o.contains_key("max_completion_tokens") { "max_completion_tokens" } else { "max_tokens" };
    let max_tokens = int(o, max_key, 1, 1 << 20)?.map(|v| v as usize);
    if let Some(n) = int(o, "n", 1, 128)? {
        if n != 1 {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
    }
    if let Some(n) = int(o, "best_of", 1, 128)? {
        if n != 1 {
            return Err(ApiError::invalid("best_of", "only best_of = 1 is supported"));
        }
    }
    // logprobs: completions take 0..5, chat a boolean (+ top_logprobs 0..20).
    match o.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Number(n)) if !chat && n.as_u64().is_some_and(|v| v <= 5) => {
            if n.as_u64() != Some(0) {
                return Err(ApiError::invalid("logprobs", "logprobs are not supported yet"));
            }
        }
        Some(Value::Bool(true)) if chat => {
            return Err(ApiError::invalid("logprobs", "logprobs are not supported yet"));
        }
        Some(_) => {
            let want = if chat { "a boolean" } else { "an integer in [0, 5]" };
            return Err(ApiError::invalid("logprobs", format!("'logprobs' must be {want}")));
        }
    }
    if chat {
        int(o, "top_logprobs", 0, 20)?;
    }
    match o.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            if m.len() > 300 {
                return Err(ApiError::invalid("logit_bias", "at most 300 entries"));
            }
            for (k, v) in m {
                let id: u64 =
                    k.parse().map_err(|_| ApiError::invalid("logit_bias", format!("key {k:?} is not a token id")))?;
                if id >= vocab as u64 {
                    return Err(ApiError::invalid("logit_bias", format!("token id {id} is outside the vocabulary")));
                }
                match v.as_f64() {
                    Some(b) if (-100.0..=100.0).contains(&b) => {}
                    _ => return Err(ApiError::invalid("logit_bias", format!("bias for {k} must be in [-100, 100]"))),
                }
            }
            if !m.is_empty() {
                return Err(ApiError::invalid("logit_bias", "logit_bias is not supported yet"));
            }
        }
        Some(_) => return Err(ApiError::invalid("logit_bias", "'logit_bias' must be an object")),
    }
    let stop = match o.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let mut v = Vec::new();
            for s in a {
                match s {
                    Value::String(s) => v.push(s.clone()),
                    _ => return Err(ApiError::invalid("stop", "'stop' must be a string or a list of strings")),
                }
            }
            v
        }
        Some(_) => return Err(ApiError::invalid("stop", "'stop' must be a string or a list of strings")),
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOP} stop sequences")));
    }
    if stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid("stop", format!("stop sequences must be 1..={MAX_STOP_BYTES} bytes")));
    }
    // Constrained output is not implemented: refuse rather than ignore it.
    for key in ["tools", "functions", "guided_json", "guided_regex", "guided_grammar", "grammar"] {
        if o.get(key).is_some_and(|v| !v.is_null() && v != &Value::Array(vec![])) {
            return Err(ApiError::invalid(key, format!("'{key}' is not supported")));
        }
    }
    match o.get("response_format") {
        None | Some(Value::Null) => {}
        Some(Value::Object(f)) if f.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => return Err(ApiError::invalid("response_format", "only {\"type\": \"text\"} is supported")),
    }
    let stream = boolean(o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => boolean(so, "include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::invalid("stream_options", "'stream_options' must be an object")),
    };
    let (mut speculate, mut draft_max) = (true, None);
    match o.get("specdec") {
        None | Some(Value::Null) => {}
        Some(Value::Object(x)) => {
            speculate = boolean(x, "speculate")
                .map_err(|e| ApiError { param: Some("specdec.speculate".into()), ..e })?
                .unwrap_or(true);
            draft_max = int(x, "draft_max", 1, MAX_DRAFT as u64)
                .map_err(|e| ApiError { param: Some("specdec.draft_max".into()), ..e })?
                .map(|v| v as usize);
        }
        Some(_) => return Err(ApiError::invalid("specdec", "'specdec' must be an object")),
    }
    let echo = !chat && boolean(o, "echo")?.unwrap_or(false);
    Ok(GenRequest {
        chat,
        prompt: Prompt::Text(String::new()),
        max_tokens,
        params,
        stop,
        stream,
        include_usage,
        speculate,
        draft_max,
        echo,
    })
}

/// `/v1/completions`: `prompt` is a string, a one-element list of strings, or token ids.
pub fn parse_completion(o: &Map<String, Value>, vocab: usize) -> Result<GenRequest, ApiError> {
    let mut r = parse_common(o, false, vocab)?;
    let bad = || ApiError::invalid("prompt", "'prompt' must be a string or a list of token ids");
    r.prompt = match o.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::invalid("prompt", "'prompt' is required")),
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => Prompt::Text(a[0].as_str().unwrap_or("").into()),
        Some(Value::Array(a)) if a.iter().all(|v| v.is_string()) && !a.is_empty() => {
            return Err(ApiError::invalid("prompt", "only one prompt per request is supported"));
        }
        Some(Value::Array(a)) => {
            let mut ids = Vec::with_capacity(a.len());
            for v in a {
                let id = v.as_u64().ok_or_else(bad)?;
                if id >= vocab as u64 {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!("token id {id} is outside the vocabulary (size {vocab})"),
                    ));
                }
                ids.push(id as u32);
            }
            if ids.is_empty() {
                return Err(ApiError::invalid("prompt", "'prompt' must not be empty"));
            }
            Prompt::Ids(ids)
        }
        Some(_) => return Err(bad()),
    };
    if r.echo && r.stream {
        return Err(ApiError::invalid("echo", "echo with stream is not supported"));
    }
    Ok(r)
}

/// One chat message, content flattened to text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// `/v1/chat/completions`: validates the fields and returns the messages to render.
pub fn parse_chat(o: &Map<String, Value>, vocab: usize) -> Result<(GenRequest, Vec<Message>), ApiError> {
    let r = parse_common(o, true, vocab)?;
    let msgs = match o.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "'messages' must not be empty")),
        _ => return Err(ApiError::invalid("messages", "'messages' must be a list of messages")),
    };
    if msgs.len() > MAX_MESSAGES {
        return Err(ApiError::invalid("messages", format!("at most {MAX_MESSAGES} messages")));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let param = format!("messages[{i}]");
        let m = m.as_object().ok_or_else(|| ApiError::invalid(&param, "each message must be an object"))?;
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant" | "developer")) => {
                if r == "developer" {
                    "system"
                } else {
                    r
                }
            }
            Some(r) => return Err(ApiError::invalid(&format!("{param}.role"), format!("unsupported role {r:?}"))),
            None => return Err(ApiError::invalid(&format!("{param}.role"), "'role' is required")),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None if role == "assistant" => String::new(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                &format!("{param}.content"),
                                "only text content parts are supported",
                            ))
                        }
                    }
                }
                s
            }
            _ => return Err(ApiError::invalid(&format!("{param}.content"), "'content' must be a string")),
        };
        out.push(Message { role: role.into(), content });
    }
    Ok((r, out))
}

/// Per-request speculative figures (vLLM's names) for the `specdec` response field.
pub fn spec_json(s: &specdec_engine::spec::SpecStats, speculated: bool) -> Value {
    json!({
        "speculative": speculated,
        "num_drafts": s.num_drafts,
        "num_draft_tokens": s.num_draft_tokens,
        "num_accepted_tokens": s.num_accepted_tokens,
        "mean_acceptance_length": s.mean_acceptance_length(),
        "accepted_per_pos": s.accepted_per_pos,
    })
}
