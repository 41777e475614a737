//! The engine thread: owns the target model, admits queued requests up to
//! `max_concurrent`, and advances every active sequence by one target pass per
//! round (plain or speculative), streaming emitted text back to the request's
//! handler.
//!
//! Invariants:
//! - A sequence lives (holds a KV cache) only while it is active; it is freed
//!   when it finishes, when its handler went away (client disconnect: the
//!   event channel is closed), or on an engine error. A queued request whose
//!   handler went away is dropped from the queue before it is ever admitted.
//! - One request's failure never touches another's sequence.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use specdec_engine::sampler::SamplingParams;
use specdec_engine::spec::auto::AutoDrafter;
use specdec_engine::spec::mtp::{MtpDrafter, MtpHead};
use specdec_engine::spec::ngram::NgramDrafter;
use specdec_engine::spec::suffix::SuffixDrafter;
use specdec_engine::spec::{Controller, Drafter, Pass, Session, SpecStats};
use specdec_engine::{BatchItem, Loaded, PassScores, Scores};
use specdec_tokenizer::StreamDecoder;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Which drafter the server uses; each request gets its own instance.
#[derive(Clone)]
pub enum DrafterKind {
    None,
    Ngram,
    Suffix,
    /// An MTP module or self-distilled head (`label` names it), alone or,
    /// with `auto`, inside the auto drafter next to a suffix drafter.
    Mtp {
        head: Arc<dyn MtpHead>,
        label: String,
        auto: bool,
    },
}

impl std::fmt::Debug for DrafterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl DrafterKind {
    /// The training-free drafters by name (MTP drafters need a loaded head).
    pub fn parse(s: &str) -> Option<DrafterKind> {
        match s {
            "none" => Some(DrafterKind::None),
            "ngram" => Some(DrafterKind::Ngram),
            "suffix" => Some(DrafterKind::Suffix),
            _ => None,
        }
    }
    pub fn name(&self) -> String {
        match self {
            DrafterKind::None => "none".into(),
            DrafterKind::Ngram => "ngram".into(),
            DrafterKind::Suffix => "suffix".into(),
            DrafterKind::Mtp { label, auto: false, .. } => label.clone(),
            DrafterKind::Mtp { label, auto: true, .. } => format!("auto({label})"),
        }
    }
    /// A drafter for one request whose positions stay below `ctx`.
    fn make(&self, ctx: usize) -> Box<dyn Drafter + Send> {
        match self {
            DrafterKind::None => Box::new(NoDraft),
            DrafterKind::Ngram => Box::new(NgramDrafter::default()),
            DrafterKind::Suffix => Box::new(SuffixDrafter::default()),
            DrafterKind::Mtp { head, label, auto } => {
                let mtp = MtpDrafter::new(head.clone(), ctx, label.clone());
                if *auto {
                    Box::new(AutoDrafter::new(SuffixDrafter::default(), mtp))
                } else {
                    Box::new(mtp)
                }
            }
        }
    }
}

/// What the engine sends back for a request.
#[derive(Debug)]
pub enum Event {
    /// New text (never a split UTF-8 character; stop strings held back until decided).
    Text(String),
    Done(Finish),
    Error(String),
}

#[derive(Debug, Clone)]
pub struct Finish {
    /// "stop" (end of sequence or a stop string) or "length".
    pub reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub spec: SpecStats,
    pub speculated: bool,
}

/// A request as the engine sees it.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_new: usize,
    pub params: SamplingParams,
    pub stop: Vec<String>,
    pub speculate: bool,
    pub draft_max: Option<usize>,
    pub tx: mpsc::UnboundedSender<Event>,
    pub received: Instant,
}

/// The queue between handlers and the engine thread.
pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    wake: Condvar,
    pub max_waiting: usize,
    pub shutdown: AtomicBool,
    /// Live sequences (each holds a KV cache).
    pub live: AtomicUsize,
}

impl Queue {
    pub fn new(max_waiting: usize) -> Queue {
        Queue {
            jobs: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            max_waiting,
            shutdown: AtomicBool::new(false),
            live: AtomicUsize::new(0),
        }
    }

    /// Enqueues; false (and the job dropped) when the queue is full.
    pub fn push(&self, job: Job) -> bool {
        let mut q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.max_waiting {
            return false;
        }
        q.push_back(job);
        self.wake.notify_one();
        true
    }

    pub fn waiting(&self) -> usize {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wakes the engine (e.g. to notice a shutdown).
    pub fn notify(&self) {
        self.wake.notify_all();
    }
}

pub struct EngineConfig {
    pub drafter: DrafterKind,
    pub draft_max: usize,
    pub max_concurrent: usize,
    pub step_delay: std::time::Duration,
    /// Target rows per pass that drafts of all sequences share.
    pub row_budget: usize,
    /// Prompt tokens per pass that prefilling sequences share.
    pub prefill_budget: usize,
}

struct Active {
    job: Job,
    session: Session,
    /// `NoDraft` when the request does not speculate.
    drafter: Box<dyn Drafter + Send>,
    speculated: bool,
    ctl: Controller,
    decoder: StreamDecoder,
    /// Decoded text so far and how much of it was sent.
    text: String,
    sent: usize,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

/// A drafter that proposes nothing: k = 0 is exactly plain decoding.
struct NoDraft;
impl Drafter for NoDraft {
    fn name(&self) -> String {
        "none".into()
    }
    fn begin(&mut self, _: &[u32]) {}
    fn propose(&mut self, _: &[u32], _: usize) -> specdec_engine::spec::Draft {
        Default::default()
    }
    fn accept(&mut self, _: &[u32]) {}
}

/// Runs until `queue.shutdown` is set and no work is left.
pub fn run(loaded: Arc<Loaded>, cfg: EngineConfig, queue: Arc<Queue>, metrics: Arc<Metrics>) {
    let model = loaded.model.as_ref();
    let tok = &loaded.tokenizer;
    let is_eog = |t: u32| tok.is_eog(t);
    let mut active: Vec<Active> = Vec::new();
    loop {
        // Admit queued requests; drop those whose client left.
        {
            let mut q = queue.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let before = q.len();
            q.retain(|j| !j.tx.is_closed());
            metrics.cancelled(before - q.len());
            while active.len() < cfg.max_concurrent {
                let Some(job) = q.pop_front() else { break };
                let k_max = job.draft_max.unwrap_or(cfg.draft_max).min(cfg.draft_max.max(1));
                let speculated = job.speculate && !matches!(cfg.drafter, DrafterKind::None);
                // An MTP head's cache covers every position the target's may reach.
                let positions = job.prompt.len() + job.max_new + k_max + 1;
                let drafter = if speculated { cfg.drafter.make(positions) } else { Box::new(NoDraft) };
                let ctl = Controller::new(k_max.max(1));
                match Session::new(model, &job.prompt, job.max_new, if speculated { k_max } else { 0 }, &job.params) {
                    Ok(session) => {
                        queue.live.fetch_add(1, Ordering::SeqCst);
                        active.push(Active {
                            job,
                            session,
                            drafter,
                            speculated,
                            ctl,
                            decoder: StreamDecoder::new(),
                            text: String::new(),
                            sent: 0,
                            first_token_at: None,
                            last_token_at: None,
                        });
                    }
                    Err(e) => {
                        let _ = job.tx.send(Event::Error(e.to_string()));
                    }
                }
            }
            metrics.set_queue(q.len(), active.len());
            if active.is_empty() {
                if queue.shutdown.load(Ordering::SeqCst) && q.is_empty() {
                    return;
                }
                let _unused = queue.wake.wait_timeout(q, std::time::Duration::from_millis(200));
                continue;
            }
        }

        if !cfg.step_delay.is_zero() {
            std::thread::sleep(cfg.step_delay);
        }
        // Cancelled sequences go first (their caches are freed here).
        let before = active.len();
        active.retain(|a| !a.job.tx.is_closed());
        if active.len() < before {
            metrics.cancelled(before - active.len());
            queue.live.fetch_sub(before - active.len(), Ordering::SeqCst);
        }
        // One target pass for all sequences: every sequence plans its rows
        // (prefill, or last token + draft), one batched forward verifies all
        // of them (ragged lengths; each sequence's logits are exactly what it
        // would get alone), then each absorbs its logits.
        let mut failed = vec![false; active.len()];
        // Verify rows cost little more than one until the kernels turn
        // compute-bound (~16 rows here): drafts share that budget, so
        // speculation backs off as the batch grows.
        let cap = (cfg.row_budget / active.len().max(1)).saturating_sub(1);
        // Long prompts are prefilled in chunks shared out per round, so
        // sequences that are decoding keep a steady pace (and short prompts
        // are not stuck behind long ones).
        let prefilling = active.iter().filter(|a| !a.session.is_prefilled()).count();
        let chunk = (cfg.prefill_budget / prefilling.max(1)).max(16);
        for a in active.iter_mut() {
            a.session.prefill_chunk = chunk;
        }
        let passes: Vec<Pass> = active
            .iter_mut()
            .zip(failed.iter_mut())
            .map(|(a, f)| {
                guarded(a, &metrics, f, |a| a.session.plan_capped(model, a.drafter.as_mut(), &mut a.ctl, cap))
                    .unwrap_or(Pass { tokens: vec![], rows: specdec_engine::LogitRows::Last })
            })
            .collect();
        // MTP drafters build on the target's hidden states of every row.
        let want_hidden = active.iter().any(|a| a.drafter.wants_hidden());
        // Greedy sequences without penalties read only each row's argmax:
        // when all of them do, the pass never writes the logits out.
        let argmax_only = active.iter().all(|a| a.session.argmax_suffices());
        let t = Instant::now();
        let mut items: Vec<BatchItem> = active
            .iter_mut()
            .zip(&passes)
            .map(|(a, p)| BatchItem { cache: &mut a.session.cache, tokens: &p.tokens, rows: p.rows })
            .collect();
        let results = run_pass(model, &mut items, want_hidden, argmax_only);
        drop(items);
        let secs = t.elapsed().as_secs_f64();
        let mut done = vec![false; active.len()];
        for (((a, r), f), d) in active.iter_mut().zip(results).zip(&mut failed).zip(&mut done) {
            if *f {
                *d = true;
                continue;
            }
            *d = match r {
                Err(e) => {
                    let _ = a.job.tx.send(Event::Error(e));
                    metrics.failed();
                    true
                }
                Ok((scores, hidden)) => guarded(a, &metrics, f, |a| {
                    finish_step(a, scores.scores(), hidden.as_deref(), secs, model, tok, &is_eog, &metrics)
                })
                .unwrap_or(true),
            };
        }
        let mut i = 0;
        active.retain(|_| {
            let keep = !done[i];
            i += 1;
            keep
        });
        queue.live.fetch_sub(done.iter().filter(|&&d| d).count(), Ordering::SeqCst);
    }
}

/// A pass's scores (and hidden states) per sequence, or its error.
type PassOut = Result<(PassScores, Option<Vec<f32>>), String>;

/// One batched target pass of the kind the sequences need: with each row's
/// hidden states for MTP drafters, argmaxes alone when every sequence decodes
/// greedily. When the batch fails, each sequence runs alone (a failed batch
/// changed no cache, and batch invariance gives each the same numbers), which
/// finds the culprit.
fn run_pass(model: &dyn specdec_engine::Model, items: &mut [BatchItem], hidden: bool, argmax: bool) -> Vec<PassOut> {
    type Scored = Vec<(PassScores, Option<Vec<f32>>)>;
    let batch = |items: &mut [BatchItem]| -> Result<Scored, specdec_engine::EngineError> {
        Ok(match (hidden, argmax) {
            (true, true) => {
                let (ids, h) = model.forward_batch_hidden_argmax(items)?;
                ids.into_iter().zip(h).map(|(i, h)| (PassScores::Argmax(i), Some(h))).collect()
            }
            (true, false) => {
                let (logits, h) = model.forward_batch_hidden(items)?;
                logits.into_iter().zip(h).map(|(l, h)| (PassScores::Logits(l), Some(h))).collect()
            }
            (false, true) => {
                model.forward_batch_argmax(items)?.into_iter().map(|i| (PassScores::Argmax(i), None)).collect()
            }
            (false, false) => model.forward_batch(items)?.into_iter().map(|l| (PassScores::Logits(l), None)).collect(),
        })
    };
    match batch(items) {
        Ok(all) => all.into_iter().map(Ok).collect(),
        Err(_) => items
            .iter_mut()
            .map(|it| match batch(std::slice::from_mut(it)) {
                Ok(mut one) => one.pop().ok_or_else(|| "empty pass".to_string()),
                Err(e) => Err(e.to_string()),
            })
            .collect(),
    }
}

/// Runs `f` on a sequence; a panic (a bug) fails that request only, never the
/// engine and everyone else's requests.
fn guarded<R>(a: &mut Active, metrics: &Metrics, failed: &mut bool, f: impl FnOnce(&mut Active) -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a))) {
        Ok(r) => Some(r),
        Err(_) => {
            let _ = a.job.tx.send(Event::Error("internal error while generating".into()));
            metrics.failed();
            *failed = true;
            None
        }
    }
}

/// Absorbs one pass's logits, streams new text; true when the sequence is
/// finished (sent Done or Error).
#[allow(clippy::too_many_arguments)]
fn finish_step(
    a: &mut Active,
    scores: Scores,
    hidden: Option<&[f32]>,
    secs: f64,
    model: &dyn specdec_engine::Model,
    tok: &specdec_tokenizer::Tokenizer,
    is_eog: &dyn Fn(u32) -> bool,
    metrics: &Metrics,
) -> bool {
    let before = a.session.spec.clone();
    let new = a.session.absorb(model, scores, hidden, secs, a.drafter.as_mut(), &mut a.ctl, is_eog);
    metrics.spec_step(&before, &a.session.spec);
    let now = Instant::now();
    if !new.is_empty() {
        if a.first_token_at.is_none() {
            a.first_token_at = Some(now);
            metrics.ttft(now.duration_since(a.job.received).as_secs_f64());
        } else if let Some(prev) = a.last_token_at {
            // Tokens of one pass arrive together: spread the gap over them.
            let gap = now.duration_since(prev).as_secs_f64() / new.len() as f64;
            for _ in 0..new.len() {
                metrics.itl(gap);
            }
        }
        a.last_token_at = Some(now);
    }
    for &t in &new {
        if !is_eog(t) {
            a.text.push_str(&a.decoder.push(tok, t));
        }
    }
    // Stop strings: cut at the first match; otherwise hold back any tail that
    // could still become one.
    let mut stopped = false;
    let mut end = a.text.len();
    let from = floor_boundary(&a.text, a.sent.saturating_sub(crate::api::MAX_STOP_BYTES));
    if let Some(pos) = a.job.stop.iter().filter_map(|s| a.text[from..].find(s.as_str()).map(|p| p + from)).min() {
        end = pos.max(a.sent);
        stopped = true;
    } else {
        for s in &a.job.stop {
            for l in (1..s.len()).rev() {
                if a.text.len() >= l
                    && a.text.is_char_boundary(a.text.len() - l)
                    && s.as_bytes().starts_with(&a.text.as_bytes()[a.text.len() - l..])
                {
                    end = end.min(a.text.len() - l);
                    break;
                }
            }
        }
    }
    let done = stopped || a.session.is_done();
    if done && !stopped {
        end = a.text.len();
    }
    end = floor_boundary(&a.text, end.max(a.sent));
    if end > a.sent {
        let chunk = a.text[a.sent..end].to_string();
        a.sent = end;
        if a.job.tx.send(Event::Text(chunk)).is_err() {
            metrics.cancelled(1);
            return true;
        }
    }
    if done {
        let reason = if stopped || a.session.stopped_on_eog { "stop" } else { "length" };
        let fin = Finish {
            reason,
            prompt_tokens: a.job.prompt.len(),
            completion_tokens: a.session.out.len(),
            spec: a.session.spec.clone(),
            speculated: a.speculated,
        };
        metrics.finished(&fin, a.job.received.elapsed().as_secs_f64());
        a.drafter.end();
        let _ = a.job.tx.send(Event::Done(fin));
    }
    done
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
