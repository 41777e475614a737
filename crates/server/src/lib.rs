//! OpenAI-compatible HTTP server over the speculative engine.
//!
//! Data flow: handler (parse, validate, tokenize, template) -> bounded queue ->
//! engine thread (`engine.rs`: sequences advanced one target pass per round,
//! speculation per request) -> per-request channel -> JSON or server-sent
//! events. A dropped handler (client gone) closes its channel, which is how
//! the engine learns to cancel the sequence and free its KV cache.

pub mod api;
pub mod engine;
pub mod metrics;
pub mod template;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use specdec_engine::Loaded;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use api::{ApiError, GenRequest, Prompt};
use engine::{DrafterKind, EngineConfig, Event, Finish, Job, Queue};
use metrics::Metrics;
use template::ChatTemplate;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub model_id: String,
    pub api_key: Option<String>,
    /// Sequences decoded at once.
    pub max_concurrent: usize,
    /// Requests waiting beyond those; more get 429.
    pub max_queue: usize,
    /// Context per sequence (prompt + output).
    pub ctx: usize,
    pub drafter: DrafterKind,
    pub draft_max: usize,
    pub body_limit: usize,
    /// Time allowed for request headers (slowloris guard).
    pub header_timeout: Duration,
    /// Time allowed for a request body to arrive.
    pub body_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Artificial pause per engine round: a fault-injection seam for tests of
    /// cancellation and overload on tiny models (zero in production).
    pub step_delay: Duration,
    /// Rows of one target pass that the drafts of all active sequences share
    /// (each sequence drafts at most budget / sequences - 1 tokens).
    pub row_budget: usize,
    /// Prompt tokens per pass shared by sequences still prefilling (chunked
    /// prefill, so decoding sequences are not stalled by a long prompt).
    pub prefill_budget: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_id: "specdec".into(),
            api_key: None,
            max_concurrent: 4,
            max_queue: 64,
            ctx: 4096,
            drafter: DrafterKind::Ngram,
            draft_max: 8,
            body_limit: 1 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(120),
            step_delay: Duration::ZERO,
            row_budget: 16,
            prefill_budget: 256,
        }
    }
}

struct AppState {
    loaded: Arc<Loaded>,
    cfg: ServerConfig,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    template: Result<ChatTemplate, String>,
    ids: AtomicU64,
    /// SHA-256 of the API key, if one is required.
    key_digest: Option<[u8; 32]>,
    /// The BOS token's text (a rendered chat template starts with it).
    bos_text: Option<String>,
}

type Shared = Arc<AppState>;

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to `drain_timeout`) and stops the engine.
pub async fn serve(
    listener: TcpListener,
    loaded: Arc<Loaded>,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let queue = Arc::new(Queue::new(cfg.max_queue));
    let metrics = Arc::new(Metrics::default());
    let header = &loaded.file.header;
    let text = |k: &str| header.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let arch = text("general.architecture").unwrap_or_default();
    let tok = &loaded.tokenizer;
    let special = |id: Option<u32>| id.map(|t| String::from_utf8_lossy(&tok.token_bytes(t, true)).into_owned());
    let bos_text = special(tok.bos);
    let template = ChatTemplate::new(
        text("tokenizer.chat_template").as_deref(),
        &arch,
        bos_text.as_deref().unwrap_or_default(),
        &special(tok.eos).unwrap_or_default(),
    )
    .map_err(|e| e.to_string());
    let engine = {
        let (l, q, m) = (loaded.clone(), queue.clone(), metrics.clone());
        let ecfg = EngineConfig {
            drafter: cfg.drafter.clone(),
            draft_max: cfg.draft_max,
            max_concurrent: cfg.max_concurrent,
            step_delay: cfg.step_delay,
            row_budget: cfg.row_budget,
            prefill_budget: cfg.prefill_budget,
        };
        std::thread::Builder::new().name("specdec-engine".into()).spawn(move || engine::run(l, ecfg, q, m))?
    };
    let key_digest = cfg.api_key.as_ref().map(|k| Sha256::digest(k.as_bytes()).into());
    let state = Arc::new(AppState {
        loaded,
        cfg: cfg.clone(),
        queue: queue.clone(),
        metrics,
        template,
        ids: AtomicU64::new(0),
        key_digest,
        bos_text,
    });
    let app = router(state);

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(cfg.header_timeout);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(cfg.drain_timeout, graceful.shutdown()).await;
    queue.shutdown.store(true, Ordering::SeqCst);
    queue.notify();
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    Ok(())
}

fn router(state: Shared) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics_text))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Compares SHA-256 digests in constant time, so neither the time nor the
/// path taken depends on how much of a wrong key matches.
fn key_matches(given: &[u8], want_digest: &[u8; 32]) -> bool {
    let d: [u8; 32] = Sha256::digest(given).into();
    let mut diff = 0u8;
    for (a, b) in d.iter().zip(want_digest) {
        diff |= a ^ b;
    }
    std::hint::black_box(diff) == 0
}

/// Default-deny: every route but `/health` needs the key, as
/// `Authorization: Bearer KEY` or `X-Api-Key: KEY`.
async fn auth(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(want) = &s.key_digest {
        let h = req.headers();
        let bearer = h.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let given = bearer.or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok())).unwrap_or("");
        if !key_matches(given.as_bytes(), want) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                "missing or incorrect API key (Authorization: Bearer ...)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("no route for {}", req.uri().path()),
    )
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}

async fn health(State(s): State<Shared>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "running": s.queue.live.load(Ordering::SeqCst),
        "waiting": s.queue.waiting(),
    }))
}

async fn models(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": s.cfg.model_id, "object": "model", "created": 0, "owned_by": "specdec",
        "max_model_len": s.cfg.ctx,
    }]}))
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    let body = s.metrics.render(s.queue.live.load(Ordering::SeqCst));
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

async fn read_body(s: &AppState, headers: &HeaderMap, body: Body) -> Result<serde_json::Map<String, Value>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds {} bytes", s.cfg.body_limit),
        )
    };
    if let Some(len) = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > s.cfg.body_limit as u64 {
            return Err(too_large());
        }
    }
    let bytes = match tokio::time::timeout(s.cfg.body_timeout, axum::body::to_bytes(body, s.cfg.body_limit)).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "timeout",
                "request body timed out",
            ))
        }
        Ok(Err(_)) => return Err(too_large()),
        Ok(Ok(b)) => b,
    };
    api::parse_body(&bytes)
}

async fn completions(State(s): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let vocab = s.loaded.tokenizer.vocab_size();
    let r = match read_body(&s, &headers, body).await.and_then(|o| api::parse_completion(&o, vocab)) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    generate(s, r).await
}

async fn chat_completions(State(s): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let vocab = s.loaded.tokenizer.vocab_size();
    let (mut r, msgs) = match read_body(&s, &headers, body).await.and_then(|o| api::parse_chat(&o, vocab)) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let rendered = match &s.template {
        Ok(t) => t.render(&msgs),
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "no_chat_template", e.clone())
                .into_response()
        }
    };
    match rendered {
        Ok(text) => r.prompt = Prompt::Text(text),
        Err(e) => return ApiError::invalid("messages", e.to_string()).into_response(),
    }
    generate(s, r).await
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn usage(f: &Finish) -> Value {
    json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
           "total_tokens": f.prompt_tokens + f.completion_tokens})
}

async fn generate(s: Shared, r: GenRequest) -> Response {
    let tok = &s.loaded.tokenizer;
    let (prompt, prompt_text) = match &r.prompt {
        Prompt::Ids(ids) => (ids.clone(), None),
        Prompt::Text(t) => {
            // A rendered chat template brings its own BOS.
            let add_special = !(r.chat && s.bos_text.as_ref().is_some_and(|b| !b.is_empty() && t.starts_with(b)));
            (tok.encode(t, add_special, true), Some(t.clone()))
        }
    };
    if prompt.is_empty() {
        return ApiError::invalid("prompt", "the prompt has no tokens").into_response();
    }
    let ctx = s.cfg.ctx.min(s.loaded.model.max_context());
    if prompt.len() >= ctx {
        let mut e = ApiError::invalid(
            "prompt",
            format!("the prompt has {} tokens; this server's context is {ctx}", prompt.len()),
        );
        e.code = Some("context_length_exceeded");
        return e.into_response();
    }
    let room = ctx - prompt.len();
    let max_new = match r.max_tokens {
        Some(m) if m > room => {
            let mut e = ApiError::invalid(
                "max_tokens",
                format!("prompt ({} tokens) + max_tokens ({m}) exceeds the context ({ctx})", prompt.len()),
            );
            e.code = Some("context_length_exceeded");
            return e.into_response();
        }
        Some(m) => m,
        // OpenAI's completions default is 16 tokens; chat runs to the context limit.
        None if !r.chat => 16.min(room),
        None => room,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt: prompt.clone(),
        max_new,
        params: r.params.clone(),
        stop: r.stop.clone(),
        speculate: r.speculate,
        draft_max: r.draft_max,
        tx,
        received: Instant::now(),
    };
    if !s.queue.push(job) {
        s.metrics.rejected();
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "queue_full",
            format!("the server is busy ({} requests waiting); retry later", s.cfg.max_queue),
        );
        e.retry_after = Some(1);
        return e.into_response();
    }
    let n = s.ids.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{:x}{n:x}", if r.chat { "chatcmpl" } else { "cmpl" }, now_secs());
    let created = now_secs();
    let model = s.cfg.model_id.clone();

    if !r.stream {
        let mut text = if r.echo { prompt_text.unwrap_or_else(|| tok.decode(&prompt, false)) } else { String::new() };
        let fin = loop {
            match rx.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done(f)) => break f,
                Some(Event::Error(e)) => {
                    return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "engine_error", e)
                        .into_response()
                }
                None => {
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "shutting_down",
                        "the engine stopped",
                    )
                    .into_response()
                }
            }
        };
        let choice = if r.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": fin.reason, "logprobs": null})
        } else {
            json!({"index": 0, "text": text, "finish_reason": fin.reason, "logprobs": null})
        };
        let object = if r.chat { "chat.completion" } else { "text_completion" };
        return Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": [choice], "usage": usage(&fin), "specdec": api::spec_json(&fin.spec, fin.speculated),
        }))
        .into_response();
    }

    // Streaming: one SSE event per engine message, then [DONE].
    let chat = r.chat;
    let include_usage = r.include_usage;
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |choices: Value, extra: Option<(&str, Value)>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
        if let Some((k, x)) = extra {
            v[k] = x;
        }
        SseEvent::default().data(v.to_string())
    };
    let first = if chat {
        Some(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]), None))
    } else {
        None
    };
    let events = stream::unfold(Some(rx_state(rx, chunk, chat, include_usage)), |st| async move {
        let mut st = st?;
        let evs = st.next().await;
        if evs.is_empty() {
            return None;
        }
        let done = st.finished;
        Some((stream::iter(evs.into_iter().map(Ok::<_, Infallible>)), if done { None } else { Some(st) }))
    })
    .flatten();
    let all = stream::iter(first.into_iter().map(Ok::<_, Infallible>)).chain(events);
    Sse::new(all).keep_alive(KeepAlive::default()).into_response()
}

type ChunkFn = Box<dyn Fn(Value, Option<(&str, Value)>) -> SseEvent + Send>;

struct StreamState {
    rx: mpsc::UnboundedReceiver<Event>,
    chunk: ChunkFn,
    chat: bool,
    include_usage: bool,
    finished: bool,
}

fn rx_state(
    rx: mpsc::UnboundedReceiver<Event>,
    chunk: impl Fn(Value, Option<(&str, Value)>) -> SseEvent + Send + 'static,
    chat: bool,
    include_usage: bool,
) -> StreamState {
    StreamState { rx, chunk: Box::new(chunk), chat, include_usage, finished: false }
}

impl StreamState {
    /// The SSE events for the next engine message (empty: stream over).
    async fn next(&mut self) -> Vec<SseEvent> {
        let done = || SseEvent::default().data("[DONE]");
        match self.rx.recv().await {
            Some(Event::Text(t)) => {
                let c = if self.chat {
                    json!([{"index": 0, "delta": {"content": t}, "finish_reason": null}])
                } else {
                    json!([{"index": 0, "text": t, "finish_reason": null, "logprobs": null}])
                };
                vec![(self.chunk)(c, None)]
            }
            Some(Event::Done(f)) => {
                self.finished = true;
                let c = if self.chat {
                    json!([{"index": 0, "delta": {}, "finish_reason": f.reason}])
                } else {
                    json!([{"index": 0, "text": "", "finish_reason": f.reason, "logprobs": null}])
                };
                let mut v = vec![(self.chunk)(c, Some(("specdec", api::spec_json(&f.spec, f.speculated))))];
                if self.include_usage {
                    v.push((self.chunk)(json!([]), Some(("usage", usage(&f)))));
                }
                v.push(done());
                v
            }
            Some(Event::Error(e)) => {
                self.finished = true;
                let err = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "engine_error", e);
                vec![SseEvent::default().data(err.body().to_string()), done()]
            }
            None => {
                self.finished = true;
                vec![]
            }
        }
    }
}
