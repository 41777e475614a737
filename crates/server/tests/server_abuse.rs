//! The server abuse suite (reliability plan 4.4) and end-to-end behaviour,
//! against a tiny random-weight Gemma 3 served on a loopback port. A raw HTTP
//! client is used so that malformed requests reach the server unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use specdec_engine::fixtures::tiny_gemma3;
use specdec_engine::{load, LoadOptions};
use specdec_server::engine::DrafterKind;
use specdec_server::{serve, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    async fn start(cfg: ServerConfig) -> TestServer {
        TestServer::start_with(|_| cfg).await
    }

    /// Starts with a config made from the loaded model (e.g. an MTP head for it).
    async fn start_with(make: impl FnOnce(&Arc<specdec_engine::Loaded>) -> ServerConfig) -> TestServer {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("specdec-server-test-{}-{n}.gguf", std::process::id()));
        std::fs::write(&path, tiny_gemma3(7, &|_, _| {})).unwrap();
        let loaded = Arc::new(load(&path, &LoadOptions { threads: 1, force_f32: false }, &|_, _| {}).unwrap());
        let _ = std::fs::remove_file(&path);
        let cfg = make(&loaded);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, loaded, cfg, async move {
            let _ = rx.await;
        }));
        TestServer { addr, stop: Some(tx), task: Some(task) }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let r = tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap()).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "server did not shut down cleanly: {r:?}");
    }
}

fn cfg() -> ServerConfig {
    ServerConfig { ctx: 256, body_limit: 1 << 20, ..Default::default() }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends raw bytes and reads the whole response (the request says `Connection: close`).
async fn raw(addr: SocketAddr, req: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer (413) and close before taking the whole body.
    let _ = s.write_all(req).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut chunk)).await.expect("response timed out") {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Resp {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("no header end");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Resp { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    raw(addr, &request("POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())).await
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    raw(addr, &request("GET", path, &[], b"")).await
}

fn assert_openai_error(r: &Resp, status: u16, param: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: status; body {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let e = v.get("error").unwrap_or_else(|| panic!("{what}: no error object in {v}"));
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "{what}: error lacks {k}: {v}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: empty message");
    if let Some(p) = param {
        assert_eq!(e["param"], json!(p), "{what}: param");
    }
}

/// Waits until no sequence is live (KV caches all freed) and nothing queued.
async fn assert_idle(addr: SocketAddr) {
    let t = Instant::now();
    loop {
        let h = get(addr, "/health").await;
        assert_eq!(h.status, 200, "health");
        let v = h.json();
        if v["running"] == json!(0) && v["waiting"] == json!(0) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "sequences still live: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_cases_get_openai_errors_and_leave_the_server_healthy() {
    let srv = TestServer::start(cfg()).await;
    let a = srv.addr;
    let c = "/v1/completions";
    let chat = "/v1/chat/completions";
    // (what, path, body, status, param)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("A03 malformed JSON", c, b"{\"prompt\": ".to_vec(), 400, Some("body")),
        ("A03 empty body", c, b"".to_vec(), 400, Some("body")),
        ("A03 not an object", c, b"[1,2]".to_vec(), 400, Some("body")),
        ("A04 invalid UTF-8", c, b"{\"prompt\": \"\xC3\x28\"}".to_vec(), 400, Some("body")),
        ("A05 lone surrogate", c, br#"{"prompt": "\ud800"}"#.to_vec(), 400, Some("body")),
        (
            "A06 prompt too long",
            c,
            json!({"prompt": "hello ".repeat(400)}).to_string().into_bytes(),
            400,
            Some("prompt"),
        ),
        (
            "A07 prompt+max_tokens > ctx",
            c,
            json!({"prompt": "a", "max_tokens": 300}).to_string().into_bytes(),
            400,
            Some("max_tokens"),
        ),
        (
            "A08 max_tokens 0",
            c,
            json!({"prompt": "a", "max_tokens": 0}).to_string().into_bytes(),
            400,
            Some("max_tokens"),
        ),
        (
            "A08 max_tokens -1",
            c,
            json!({"prompt": "a", "max_tokens": -1}).to_string().into_bytes(),
            400,
            Some("max_tokens"),
        ),
        (
            "A08 max_tokens 2^31",
            c,
            json!({"prompt": "a", "max_tokens": 1u64 << 31}).to_string().into_bytes(),
            400,
            Some("max_tokens"),
        ),
        ("A08 max_tokens 1e30", c, br#"{"prompt": "a", "max_tokens": 1e30}"#.to_vec(), 400, Some("max_tokens")),
        (
            "A08 max_tokens string",
            c,
            json!({"prompt": "a", "max_tokens": "10"}).to_string().into_bytes(),
            400,
            Some("max_tokens"),
        ),
        (
            "A09 temperature -1",
            c,
            json!({"prompt": "a", "temperature": -1}).to_string().into_bytes(),
            400,
            Some("temperature"),
        ),
        ("A09 temperature NaN", c, br#"{"prompt": "a", "temperature": NaN}"#.to_vec(), 400, Some("body")),
        ("A09 temperature 1e309", c, br#"{"prompt": "a", "temperature": 1e309}"#.to_vec(), 400, Some("body")),
        (
            "A09 temperature 3",
            c,
            json!({"prompt": "a", "temperature": 3}).to_string().into_bytes(),
            400,
            Some("temperature"),
        ),
        ("A10 top_p 0", c, json!({"prompt": "a", "top_p": 0}).to_string().into_bytes(), 400, Some("top_p")),
        ("A10 top_p 1.5", c, json!({"prompt": "a", "top_p": 1.5}).to_string().into_bytes(), 400, Some("top_p")),
        ("A10 top_k -2", c, json!({"prompt": "a", "top_k": -2}).to_string().into_bytes(), 400, Some("top_k")),
        ("A10 top_k 2^40", c, json!({"prompt": "a", "top_k": 1u64 << 40}).to_string().into_bytes(), 400, Some("top_k")),
        ("A10 min_p 2", c, json!({"prompt": "a", "min_p": 2}).to_string().into_bytes(), 400, Some("min_p")),
        ("A11 n 0", c, json!({"prompt": "a", "n": 0}).to_string().into_bytes(), 400, Some("n")),
        ("A11 n 10^6", c, json!({"prompt": "a", "n": 1_000_000}).to_string().into_bytes(), 400, Some("n")),
        ("A11 n 2", c, json!({"prompt": "a", "n": 2}).to_string().into_bytes(), 400, Some("n")),
        ("A12 logprobs -1", c, json!({"prompt": "a", "logprobs": -1}).to_string().into_bytes(), 400, Some("logprobs")),
        (
            "A12 top_logprobs 21",
            chat,
            json!({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 21}).to_string().into_bytes(),
            400,
            Some("top_logprobs"),
        ),
        (
            "A13 logit_bias huge id",
            c,
            json!({"prompt": "a", "logit_bias": {"999999999": 1}}).to_string().into_bytes(),
            400,
            Some("logit_bias"),
        ),
        (
            "A13 logit_bias -1",
            c,
            json!({"prompt": "a", "logit_bias": {"-1": 1}}).to_string().into_bytes(),
            400,
            Some("logit_bias"),
        ),
        (
            "A13 logit_bias abc",
            c,
            json!({"prompt": "a", "logit_bias": {"abc": 1}}).to_string().into_bytes(),
            400,
            Some("logit_bias"),
        ),
        (
            "A13 logit_bias 1e9",
            c,
            json!({"prompt": "a", "logit_bias": {"5": 1e9}}).to_string().into_bytes(),
            400,
            Some("logit_bias"),
        ),
        (
            "A14 five stops",
            c,
            json!({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}).to_string().into_bytes(),
            400,
            Some("stop"),
        ),
        ("A14 empty stop", c, json!({"prompt": "a", "stop": [""]}).to_string().into_bytes(), 400, Some("stop")),
        (
            "A14 long stop",
            c,
            json!({"prompt": "a", "stop": "x".repeat(10_000)}).to_string().into_bytes(),
            400,
            Some("stop"),
        ),
        ("A15 OOV token id", c, json!({"prompt": [5, 300]}).to_string().into_bytes(), 400, Some("prompt")),
        ("A15 negative token id", c, json!({"prompt": [-1]}).to_string().into_bytes(), 400, Some("prompt")),
        ("A16 no messages", chat, json!({"messages": []}).to_string().into_bytes(), 400, Some("messages")),
        (
            "A16 too many messages",
            chat,
            json!({"messages": vec![json!({"role": "user", "content": ""}); 5000]}).to_string().into_bytes(),
            400,
            Some("messages"),
        ),
        (
            "A16 wrong role",
            chat,
            json!({"messages": [{"role": "wizard", "content": "a"}]}).to_string().into_bytes(),
            400,
            Some("messages[0].role"),
        ),
        (
            "A16 missing content",
            chat,
            json!({"messages": [{"role": "user"}]}).to_string().into_bytes(),
            400,
            Some("messages[0].content"),
        ),
        (
            "A16 deep nesting",
            chat,
            format!("{{\"messages\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            400,
            Some("body"),
        ),
        ("A17 tools", chat, json!({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]}).to_string().into_bytes(), 400, Some("tools")),
        (
            "A17 response_format",
            chat,
            json!({"messages": [{"role": "user", "content": "a"}], "response_format": {"type": "json_schema", "json_schema": {"pattern": "(a+)+$"}}})
                .to_string()
                .into_bytes(),
            400,
            Some("response_format"),
        ),
        (
            "specdec draft_max 0",
            c,
            json!({"prompt": "a", "specdec": {"draft_max": 0}}).to_string().into_bytes(),
            400,
            Some("specdec.draft_max"),
        ),
        ("A01 body too large", c, json!({"prompt": "x".repeat(2 << 20)}).to_string().into_bytes(), 413, None),
    ];
    // A01 with a declared 100 MB body: refused before any of it is read.
    let mut r =
        b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 104857600\r\n\r\n{".to_vec();
    r.extend_from_slice(&[b' '; 1000]);
    assert_openai_error(&raw(a, &r).await, 413, None, "A01 declared 100 MB");
    for (what, path, body, status, param) in &cases {
        let r = raw(a, &request("POST", path, &[("Content-Type", "application/json")], body)).await;
        assert_openai_error(&r, *status, *param, what);
    }
    // A20 unknown route and method.
    assert_openai_error(&get(a, "/v1/nothing").await, 404, None, "A20 route");
    assert_openai_error(&get(a, "/v1/completions").await, 405, None, "A20 method");
    // A08 null max_tokens: a default cap, not unbounded.
    let r = post(a, c, &json!({"prompt": "hello", "max_tokens": null, "temperature": 0})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"].as_u64().map(|n| n <= 16), Some(true));
    // A18 seed extremes are accepted.
    for seed in [json!(u64::MAX), json!(-1)] {
        let r = post(a, c, &json!({"prompt": "hello", "max_tokens": 4, "seed": seed})).await;
        assert_eq!(r.status, 200, "seed {seed}");
    }
    // A02 header bomb: refused or closed, and the server lives on.
    let big = "x".repeat(1 << 20);
    let r = {
        let mut s = TcpStream::connect(a).await.unwrap();
        let _ = s.write_all(format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        buf
    };
    assert!(
        r.is_empty() || String::from_utf8_lossy(&r).starts_with("HTTP/1.1 431"),
        "header bomb answered {:?}",
        String::from_utf8_lossy(&r[..r.len().min(40)])
    );
    assert_idle(a).await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_except_for_health() {
    let srv = TestServer::start(ServerConfig { api_key: Some("s3cret".into()), ..cfg() }).await;
    let a = srv.addr;
    let ok = |r: &Resp| r.status == 200;
    assert!(ok(&get(a, "/health").await));
    // (A trailing space is optional whitespace in HTTP, not part of the value.)
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Bearer s3cret  x")],
        vec![("Authorization", "bearer s3cret")],
        vec![("Authorization", "Bearer s3cre")],
        vec![("X-Api-Key", "S3CRET")],
    ] {
        let r = raw(a, &request("GET", "/v1/models", &headers, b"")).await;
        assert_openai_error(&r, 401, None, &format!("auth {headers:?}"));
        assert_eq!(r.json()["error"]["type"], "authentication_error");
    }
    assert_openai_error(&raw(a, &request("GET", "/metrics", &[], b"")).await, 401, None, "metrics need the key");
    assert!(ok(&raw(a, &request("GET", "/v1/models", &[("Authorization", "Bearer s3cret")], b"")).await));
    assert!(ok(&raw(a, &request("GET", "/v1/models", &[("X-Api-Key", "s3cret")], b"")).await));
    let body = json!({"prompt": "hello", "max_tokens": 3}).to_string();
    let r = raw(a, &request("POST", "/v1/completions", &[("Authorization", "Bearer s3cret")], body.as_bytes())).await;
    assert_eq!(r.status, 200);
    srv.shutdown().await;
}

/// Parses an SSE body into its data payloads.
fn sse_data(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("SSE body is UTF-8");
    text.split("\n\n").filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_string)).collect()
}

fn streamed_text(body: &[u8], chat: bool) -> (String, Value) {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "stream must end with [DONE]");
    let mut text = String::new();
    let mut last = Value::Null;
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(c) = v["choices"].get(0) {
            let piece = if chat { c["delta"]["content"].as_str() } else { c["text"].as_str() };
            text.push_str(piece.unwrap_or(""));
            if !c["finish_reason"].is_null() {
                last = v.clone();
            }
        }
    }
    (text, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_equals_non_streamed_and_speculation_is_lossless() {
    let srv = TestServer::start(cfg()).await;
    let a = srv.addr;
    let m0 = get(a, "/metrics").await;
    let m0 = String::from_utf8(m0.body).unwrap();
    let mut total_completion = 0.0;
    let prompts = ["hello hello abc hello", "abcabcabc", "\u{2581}a b c"];
    for (i, p) in prompts.iter().enumerate() {
        for chat in [false, true] {
            let (path, mut body) = if chat {
                ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": p}]}))
            } else {
                ("/v1/completions", json!({"prompt": p}))
            };
            body["max_tokens"] = json!(40 + i * 7);
            body["temperature"] = json!(0);
            let plain = {
                let mut b = body.clone();
                b["specdec"] = json!({"speculate": false});
                post(a, path, &b).await
            };
            assert_eq!(plain.status, 200);
            let pv = plain.json();
            let text_of = |v: &Value| {
                if chat {
                    v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
                } else {
                    v["choices"][0]["text"].as_str().unwrap().to_string()
                }
            };
            let want = text_of(&pv);
            assert_eq!(pv["specdec"]["speculative"], json!(false));
            total_completion += pv["usage"]["completion_tokens"].as_f64().unwrap();
            for draft_max in [1, 4, 8] {
                let mut b = body.clone();
                b["specdec"] = json!({"draft_max": draft_max});
                let r = post(a, path, &b).await;
                assert_eq!(r.status, 200);
                let v = r.json();
                assert_eq!(text_of(&v), want, "speculative (draft_max {draft_max}) differs from plain for {p:?}");
                assert_eq!(v["usage"], pv["usage"]);
                total_completion += v["usage"]["completion_tokens"].as_f64().unwrap();
                b["stream"] = json!(true);
                b["stream_options"] = json!({"include_usage": true});
                let s = post(a, path, &b).await;
                assert_eq!(s.status, 200);
                assert!(s.header("content-type").unwrap_or_default().starts_with("text/event-stream"));
                // Every chunk is valid UTF-8 JSON (checked by parsing) and the
                // concatenation equals the non-streamed text.
                let (text, last) = streamed_text(&s.body, chat);
                assert_eq!(text, want, "stream differs for {p:?}");
                assert_eq!(last["choices"][0]["finish_reason"], v["choices"][0]["finish_reason"]);
                total_completion += v["usage"]["completion_tokens"].as_f64().unwrap();
            }
        }
    }
    // Metrics moved as expected.
    let m1 = String::from_utf8(get(a, "/metrics").await.body).unwrap();
    let d = |name: &str| metric(&m1, name) - metric(&m0, name);
    assert_eq!(d("specdec:generation_tokens_total"), total_completion);
    assert_eq!(
        d("specdec:request_success_total{finished_reason=\"stop\"}")
            + d("specdec:request_success_total{finished_reason=\"length\"}"),
        42.0
    );
    assert!(d("specdec:spec_decode_num_drafts_total") > 0.0);
    assert!(d("specdec:spec_decode_num_accepted_tokens_total") <= d("specdec:spec_decode_num_draft_tokens_total"));
    assert!(metric(&m1, "specdec:time_to_first_token_seconds_count") >= 42.0);
    assert!(m1.contains("specdec:spec_decode_num_accepted_tokens_per_pos_total{position=\"0\"}"));
    // Stop strings: the output ends before the first occurrence.
    let full =
        post(a, "/v1/completions", &json!({"prompt": "abcabc", "max_tokens": 30, "temperature": 0})).await.json();
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    if let Some(stop) = text.get(3..6).filter(|s| !s.is_empty()) {
        let r = post(
            a,
            "/v1/completions",
            &json!({"prompt": "abcabc", "max_tokens": 30, "temperature": 0, "stop": [stop]}),
        )
        .await
        .json();
        let cut = &text[..text.find(stop).unwrap()];
        assert_eq!(r["choices"][0]["text"].as_str().unwrap(), cut);
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
    }
    assert_idle(a).await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_cancel_running_and_queued_requests_only() {
    let srv =
        TestServer::start(ServerConfig { max_concurrent: 1, step_delay: Duration::from_millis(5), ..cfg() }).await;
    let a = srv.addr;
    let long =
        |stream: bool| json!({"prompt": "hello", "max_tokens": 250, "temperature": 0.7, "stream": stream}).to_string();
    // A22: a running stream, dropped after the first chunks.
    {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(&request("POST", "/v1/completions", &[], long(true).as_bytes())).await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
    }
    assert_idle(a).await;
    // A runner keeps the only slot busy; a queued stream is dropped; the runner must still finish.
    let runner = tokio::spawn(async move {
        post(a, "/v1/completions", &json!({"prompt": "abc", "max_tokens": 200, "temperature": 0})).await
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(&request("POST", "/v1/completions", &[], long(true).as_bytes())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // A23: a non-streaming request dropped before its answer.
    {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(&request("POST", "/v1/completions", &[], long(false).as_bytes())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let r = runner.await.unwrap();
    assert_eq!(r.status, 200, "the runner must not be cancelled");
    assert_eq!(r.json()["usage"]["completion_tokens"].as_u64().map(|n| n > 0), Some(true));
    assert_idle(a).await;
    let m = String::from_utf8(get(a, "/metrics").await.body).unwrap();
    assert!(metric(&m, "specdec:request_cancelled_total") >= 2.0, "cancellations not counted:\n{m}");
    assert_eq!(metric(&m, "specdec:num_live_sequences"), 0.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after_and_nothing_hangs() {
    let srv = TestServer::start(ServerConfig {
        max_concurrent: 1,
        max_queue: 2,
        step_delay: Duration::from_millis(2),
        ..cfg()
    })
    .await;
    let a = srv.addr;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(async move {
            post(a, "/v1/completions", &json!({"prompt": "hello", "max_tokens": 60, "temperature": 0})).await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                busy += 1;
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
                assert_openai_error(&r, 429, None, "A24");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    assert_idle(a).await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_time_out_and_shutdown_drains_streams() {
    let srv = TestServer::start(ServerConfig { header_timeout: Duration::from_millis(500), ..cfg() }).await;
    let a = srv.addr;
    // A21: a connection that never finishes its headers is closed.
    let mut slow = TcpStream::connect(a).await.unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "slow connection was not closed");
    // Meanwhile others are served.
    assert_eq!(get(a, "/health").await.status, 200);
    // A27: in-flight streams finish when shutdown starts.
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(tokio::spawn(async move {
            let body = json!({"prompt": "hello", "max_tokens": 80, "temperature": 0, "stream": true});
            post(a, "/v1/completions", &body).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    srv.shutdown().await;
    for s in streams {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
    }
    assert!(TcpStream::connect(a).await.is_err(), "new connections must be refused after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_the_text_they_get_alone() {
    // A small prefill budget: long prompts are prefilled in chunks next to decoding sequences.
    let srv = TestServer::start(ServerConfig {
        max_concurrent: 4,
        step_delay: Duration::from_millis(1),
        prefill_budget: 16,
        ..cfg()
    })
    .await;
    let a = srv.addr;
    let long = "hello abc he llo ".repeat(8);
    let bodies: Vec<Value> = (0..6)
        .map(|i| {
            let p = ["hello abc hello", &long, "he llo he llo", "a b c a b c", &long[5..], "abc"][i];
            json!({"prompt": p, "max_tokens": 30 + 9 * i, "temperature": 0, "specdec": {"speculate": i % 2 == 0}})
        })
        .collect();
    let text = |r: &Resp| r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(text(&post(a, "/v1/completions", b).await));
    }
    let tasks: Vec<_> =
        bodies.iter().cloned().map(|b| tokio::spawn(async move { post(a, "/v1/completions", &b).await })).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(text(&r), alone[i], "request {i}: batched with others, the text changed");
    }
    assert_idle(a).await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtp_and_auto_drafters_are_lossless_in_the_server() {
    for auto in [false, true] {
        let srv = TestServer::start_with(|l| {
            // A random-weight head over a reduced vocabulary: it drafts badly,
            // through every code path (hidden states handed over per sequence
            // from one batched pass).
            let vocab: Vec<u32> = (0..l.model.vocab_size() as u32).rev().step_by(2).collect();
            let bytes = specdec_engine::fixtures::random_head(&l.file, vocab, 11).unwrap();
            let file = specdec_gguf::GgufFile::from_bytes(bytes, "random-head").unwrap();
            let head = specdec_engine::models::head::load_head(l.file.clone(), &file, l.pool.clone(), false).unwrap();
            let drafter = DrafterKind::Mtp { head, label: "mtp:random".into(), auto };
            ServerConfig { drafter, ..cfg() }
        })
        .await;
        let a = srv.addr;
        let prompts = ["hello hello abc hello", "abcabcabc abc", "\u{2581}a b c d e"];
        let body = |p: &str, speculate: bool| json!({"prompt": p, "max_tokens": 48, "temperature": 0, "specdec": {"speculate": speculate}});
        let mut want = Vec::new();
        for p in prompts {
            let r = post(a, "/v1/completions", &body(p, false)).await;
            assert_eq!(r.status, 200);
            want.push(r.json()["choices"][0]["text"].as_str().unwrap().to_string());
        }
        // Concurrently, so one batched pass carries several sequences' rows.
        let got = futures_join(prompts.iter().map(|p| {
            let b = body(p, true);
            async move { post(a, "/v1/completions", &b).await }
        }))
        .await;
        let mut drafted = 0.0;
        for ((r, w), p) in got.iter().zip(&want).zip(prompts) {
            assert_eq!(r.status, 200);
            let v = r.json();
            assert_eq!(v["choices"][0]["text"].as_str().unwrap(), w, "auto={auto}: {p:?} differs from plain");
            assert_eq!(v["specdec"]["speculative"], json!(true));
            drafted += v["specdec"]["num_drafts"].as_f64().unwrap_or(0.0);
        }
        assert!(drafted > 0.0, "auto={auto}: nothing was drafted");
        assert_idle(a).await;
        srv.shutdown().await;
    }
}

/// Awaits all futures concurrently (in order of the results).
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
