//! Prometheus metrics. Speculative counters carry vLLM's names and meanings:
//! `spec_decode_num_drafts` (target passes that carried a draft),
//! `spec_decode_num_draft_tokens`, `spec_decode_num_accepted_tokens`, and
//! `spec_decode_num_accepted_tokens_per_pos` (label `position`, 0-based).

use std::fmt::Write;
use std::sync::Mutex;

use specdec_engine::spec::SpecStats;

use crate::engine::Finish;

const PREFIX: &str = "specdec:";

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    n: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, n: 0 }
    }
    fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.n += 1;
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} histogram");
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{PREFIX}{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{PREFIX}{name}_bucket{{le=\"+Inf\"}} {}", self.n);
        let _ = writeln!(out, "{PREFIX}{name}_sum {}\n{PREFIX}{name}_count {}", self.sum, self.n);
    }
}

const LATENCY: &[f64] = &[0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0];

struct Inner {
    num_drafts: u64,
    num_draft_tokens: u64,
    num_accepted_tokens: u64,
    accepted_per_pos: Vec<u64>,
    prompt_tokens: u64,
    generation_tokens: u64,
    success: [(&'static str, u64); 2],
    failed: u64,
    cancelled: u64,
    rejected: u64,
    running: usize,
    waiting: usize,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
}

pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                num_drafts: 0,
                num_draft_tokens: 0,
                num_accepted_tokens: 0,
                accepted_per_pos: Vec::new(),
                prompt_tokens: 0,
                generation_tokens: 0,
                success: [("stop", 0), ("length", 0)],
                failed: 0,
                cancelled: 0,
                rejected: 0,
                running: 0,
                waiting: 0,
                ttft: Histogram::new(LATENCY),
                itl: Histogram::new(LATENCY),
                e2e: Histogram::new(LATENCY),
            }),
        }
    }
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
    /// Adds the difference between two snapshots of a sequence's stats.
    pub fn spec_step(&self, before: &SpecStats, after: &SpecStats) {
        self.with(|m| {
            m.num_drafts += (after.num_drafts - before.num_drafts) as u64;
            m.num_draft_tokens += (after.num_draft_tokens - before.num_draft_tokens) as u64;
            m.num_accepted_tokens += (after.num_accepted_tokens - before.num_accepted_tokens) as u64;
            if m.accepted_per_pos.len() < after.accepted_per_pos.len() {
                m.accepted_per_pos.resize(after.accepted_per_pos.len(), 0);
            }
            for (i, (a, b)) in after.accepted_per_pos.iter().zip(before.accepted_per_pos.iter()).enumerate() {
                m.accepted_per_pos[i] += (a - b) as u64;
            }
        })
    }
    pub fn ttft(&self, s: f64) {
        self.with(|m| m.ttft.observe(s))
    }
    pub fn itl(&self, s: f64) {
        self.with(|m| m.itl.observe(s))
    }
    pub fn finished(&self, f: &Finish, e2e: f64) {
        self.with(|m| {
            m.prompt_tokens += f.prompt_tokens as u64;
            m.generation_tokens += f.completion_tokens as u64;
            for (r, c) in m.success.iter_mut() {
                if *r == f.reason {
                    *c += 1;
                }
            }
            m.e2e.observe(e2e);
        })
    }
    pub fn failed(&self) {
        self.with(|m| m.failed += 1)
    }
    pub fn cancelled(&self, n: usize) {
        self.with(|m| m.cancelled += n as u64)
    }
    pub fn rejected(&self) {
        self.with(|m| m.rejected += 1)
    }
    pub fn set_queue(&self, waiting: usize, running: usize) {
        self.with(|m| {
            m.waiting = waiting;
            m.running = running;
        })
    }

    /// Prometheus text exposition; `live` is the number of live sequences (KV caches).
    pub fn render(&self, live: usize) -> String {
        self.with(|m| {
            let mut o = String::new();
            let mut counter = |name: &str, help: &str, v: u64| {
                let _ = writeln!(
                    o,
                    "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} counter\n{PREFIX}{name}_total {v}"
                );
            };
            counter("spec_decode_num_drafts", "Target passes that verified a draft.", m.num_drafts);
            counter("spec_decode_num_draft_tokens", "Draft tokens proposed.", m.num_draft_tokens);
            counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.", m.num_accepted_tokens);
            counter("prompt_tokens", "Prompt tokens processed.", m.prompt_tokens);
            counter("generation_tokens", "Tokens generated.", m.generation_tokens);
            counter("request_failure", "Requests that failed in the engine.", m.failed);
            counter("request_cancelled", "Requests cancelled by client disconnect.", m.cancelled);
            counter("request_rejected", "Requests rejected because the queue was full.", m.rejected);
            let name = "spec_decode_num_accepted_tokens_per_pos";
            let _ = writeln!(
                o,
                "# HELP {PREFIX}{name} Accepted draft tokens by position (0-based).\n# TYPE {PREFIX}{name} counter"
            );
            for (i, v) in m.accepted_per_pos.iter().enumerate() {
                let _ = writeln!(o, "{PREFIX}{name}_total{{position=\"{i}\"}} {v}");
            }
            let name = "request_success";
            let _ =
                writeln!(o, "# HELP {PREFIX}{name} Finished requests by finish reason.\n# TYPE {PREFIX}{name} counter");
            for (r, c) in m.success {
                let _ = writeln!(o, "{PREFIX}{name}_total{{finished_reason=\"{r}\"}} {c}");
            }
            for (name, help, v) in [
                ("num_requests_running", "Sequences being decoded.", m.running),
                ("num_requests_waiting", "Requests in the queue.", m.waiting),
                ("num_live_sequences", "Sequences holding a KV cache.", live),
            ] {
                let _ = writeln!(o, "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} gauge\n{PREFIX}{name} {v}");
            }
            m.ttft.render(&mut o, "time_to_first_token_seconds", "Time to first token.");
            m.itl.render(&mut o, "inter_token_latency_seconds", "Time between output tokens.");
            m.e2e.render(&mut o, "e2e_request_latency_seconds", "End-to-end request latency.");
            o
        })
    }
}
