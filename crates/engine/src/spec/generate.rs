//! The speculative decoding loop, as a step-wise session (so a server can
//! interleave many, and batch their target passes) and as one call.
//!
//! Invariant: the target cache holds every context token except the last
//! emitted one (`last`). Each step runs `[last, d1..dk]` through the target
//! with logits for all k+1 rows, verifies, keeps `last, d1..da` in the cache
//! and emits `d1..da, bonus`. With k = 0 this is exactly plain decoding.

use std::time::Instant;

use super::verify::{verify, verify_lazy};
use super::Draft;
use super::{Controller, Drafter};
use crate::generate::GenStats;
use crate::kv::KvCache;
use crate::rng::Rng;
use crate::sampler::{probs, SamplingParams};
use crate::{EngineError, LogitRows, Model, PassScores, Scores};

/// Speculative metrics, with vLLM's names and meanings.
#[derive(Clone, Debug, Default)]
pub struct SpecStats {
    /// Verify steps that carried a draft (k > 0).
    pub num_drafts: usize,
    pub num_draft_tokens: usize,
    pub num_accepted_tokens: usize,
    /// accepted_per_pos[i]: drafts whose token i (0-based) was accepted.
    pub accepted_per_pos: Vec<usize>,
    /// Seconds spent in the drafter.
    pub draft_s: f64,
}

impl SpecStats {
    /// 1 + accepted / drafts (tokens per draft-carrying target pass).
    pub fn mean_acceptance_length(&self) -> f64 {
        if self.num_drafts == 0 {
            1.0
        } else {
            1.0 + self.num_accepted_tokens as f64 / self.num_drafts as f64
        }
    }
    pub fn acceptance_rate(&self) -> f64 {
        self.num_accepted_tokens as f64 / self.num_draft_tokens.max(1) as f64
    }
}

pub struct SpecOutput {
    pub tokens: Vec<u32>,
    pub stats: GenStats,
    pub spec: SpecStats,
    pub stopped_on_eog: bool,
}

/// One request's speculative generation, advanced one target pass at a time:
/// `plan` says what the target must run (on `cache`), `absorb` takes the
/// logits back. The first pass is the prompt's prefill.
pub struct Session {
    /// The target's KV cache for this request.
    pub cache: KvCache,
    ctx: Vec<u32>,
    prompt_len: usize,
    /// Tokens emitted so far.
    pub out: Vec<u32>,
    max_new: usize,
    params: SamplingParams,
    rng: Rng,
    pub stats: GenStats,
    pub spec: SpecStats,
    pub stopped_on_eog: bool,
    prefilled: bool,
    /// Largest prefill chunk per pass.
    pub prefill_chunk: usize,
    /// The draft riding on the planned pass.
    pending: Draft,
    /// The drafter's token after the verified ones, when it proposed more
    /// than the controller kept (the bonus then shows whether it was right).
    pending_next: Option<u32>,
    /// Cache length before the planned pass.
    base: usize,
    /// Target hidden states of the prompt, gathered over prefill chunks for a
    /// drafter that wants them.
    prefill_hidden: Vec<f32>,
    t_decode: Option<Instant>,
}

/// What the target runs next for a session.
pub struct Pass {
    pub tokens: Vec<u32>,
    pub rows: LogitRows,
}

impl Session {
    pub fn new(
        model: &dyn Model,
        prompt: &[u32],
        max_new: usize,
        max_k: usize,
        params: &SamplingParams,
    ) -> Result<Session, EngineError> {
        // Room for drafts beyond the output when the model's context allows; near
        // the context limit drafts shrink rather than fail (plain decoding would fit).
        let cache = model.new_cache(prompt.len() + max_new + max_k + 1);
        if prompt.len() + max_new > cache.capacity {
            return Err(EngineError::ContextFull { need: prompt.len() + max_new, capacity: cache.capacity });
        }
        Ok(Session {
            cache,
            ctx: prompt.to_vec(),
            prompt_len: prompt.len(),
            out: Vec::with_capacity(max_new),
            max_new,
            params: params.clone(),
            rng: Rng::new(params.seed),
            stats: GenStats { prompt_tokens: prompt.len(), ..Default::default() },
            spec: SpecStats { accepted_per_pos: vec![0; max_k], ..Default::default() },
            stopped_on_eog: false,
            prefilled: false,
            prefill_chunk: usize::MAX,
            pending: Draft::default(),
            pending_next: None,
            base: 0,
            prefill_hidden: Vec::new(),
            t_decode: None,
        })
    }

    /// Whether the prompt is fully in the cache.
    pub fn is_prefilled(&self) -> bool {
        self.prefilled
    }

    pub fn is_done(&self) -> bool {
        self.stopped_on_eog || self.out.len() >= self.max_new || self.prompt_len == 0
    }

    /// The next target pass: the prompt first, then `[last, draft..]`.
    pub fn plan(&mut self, model: &dyn Model, drafter: &mut dyn Drafter, ctl: &mut Controller) -> Pass {
        self.plan_capped(model, drafter, ctl, usize::MAX)
    }

    /// As `plan`, drafting at most `cap` tokens (a server shares one pass
    /// among many sequences and splits a row budget between them).
    pub fn plan_capped(
        &mut self,
        model: &dyn Model,
        drafter: &mut dyn Drafter,
        ctl: &mut Controller,
        cap: usize,
    ) -> Pass {
        self.base = self.cache.len();
        if !self.prefilled {
            // Until prefilled, the cache holds exactly the prompt's first tokens.
            let done = self.cache.len();
            let end = self.prompt_len.min(done.saturating_add(self.prefill_chunk.max(1)));
            // Only the prompt's last row needs logits (the first token).
            let rows = if end < self.prompt_len { LogitRows::None } else { LogitRows::Last };
            return Pass { tokens: self.ctx[done..end].to_vec(), rows };
        }
        let remaining = self.max_new - self.out.len();
        // Never draft past the token budget: the bonus always comes on top.
        let room = self.cache.capacity.saturating_sub(self.cache.len() + 1);
        let budget = ctl.draft_budget().capped((remaining - 1).min(room).min(cap));
        let mut draft = if budget.max > 0 {
            let td = Instant::now();
            let mut d = drafter.propose_within(&self.ctx, &budget);
            let dt = td.elapsed().as_secs_f64();
            self.spec.draft_s += dt;
            d.truncate(budget.of(d.source));
            ctl.observe_draft(d.source, d.len(), dt);
            d
        } else {
            Draft::default()
        };
        let k = ctl.choose(&draft).min(draft.len());
        // Out-of-vocabulary draft ids cannot be fed to the target: cut the
        // draft there (they would be rejected anyway).
        let vocab = model.vocab_size() as u32;
        let keep = draft.tokens[..k].iter().take_while(|&&t| t < vocab).count();
        self.pending_next = draft.tokens.get(keep).copied();
        draft.truncate(k);
        if !draft.q.is_empty() && draft.q.len() != draft.len() {
            draft.q.clear();
        }
        draft.truncate(keep);
        let last = *self.ctx.last().expect("context is never empty");
        let mut tokens = Vec::with_capacity(draft.len() + 1);
        tokens.push(last);
        tokens.extend_from_slice(&draft.tokens);
        self.pending = draft;
        Pass { tokens, rows: LogitRows::All }
    }

    /// Takes the scores of the planned pass (run in `secs`; the argmax alone
    /// only where `argmax_suffices`) and, for a
    /// drafter that wants them, the pass's hidden states (every row), verifies,
    /// and returns the tokens emitted by this step.
    #[allow(clippy::too_many_arguments)]
    pub fn absorb(
        &mut self,
        model: &dyn Model,
        scores: Scores,
        hidden: Option<&[f32]>,
        secs: f64,
        drafter: &mut dyn Drafter,
        ctl: &mut Controller,
        is_eog: &dyn Fn(u32) -> bool,
    ) -> Vec<u32> {
        let n_vocab = model.vocab_size();
        if !self.prefilled {
            self.stats.prefill_s += secs;
            if let Some(h) = hidden {
                self.prefill_hidden.extend_from_slice(h);
            }
            if self.cache.len() < self.prompt_len {
                // A chunk of a long prompt: nothing to emit yet (batch
                // invariance makes chunked prefill give the same logits).
                return Vec::new();
            }
            self.prefilled = true;
            self.t_decode = Some(Instant::now());
            drafter.begin(&self.ctx);
            let p = row_probs(scores, 0, n_vocab, &self.params, &self.ctx);
            let first = verify(&[], &[], &[p], &mut self.rng).bonus;
            self.emit(first, is_eog);
            let prompt_hidden = std::mem::take(&mut self.prefill_hidden);
            if drafter.wants_hidden() && !prompt_hidden.is_empty() {
                // Row j of the prompt is followed by token j + 1, the last by `first`.
                let next: Vec<u32> = self.ctx[1..=self.prompt_len].to_vec();
                drafter.observe_hidden(0, &prompt_hidden, &next);
            }
            drafter.accept(&[first]);
            self.touch_stats();
            return vec![first];
        }
        self.stats.target_passes += 1;
        let draft = std::mem::take(&mut self.pending);
        let k = draft.len();
        // p_i is computed when the verifier reaches row i (its history: the
        // context and the draft before it).
        let mut hist = self.ctx.clone();
        let p = |i: usize| {
            hist.extend_from_slice(&draft.tokens[hist.len() - self.ctx.len()..i]);
            row_probs(scores, i, n_vocab, &self.params, &hist)
        };
        let v = verify_lazy(&draft.tokens, &draft.q, p, &mut self.rng);
        let next_hit = self.pending_next.take().map(|t| t == v.bonus);
        ctl.observe(draft.source, draft.class, k, v.accepted, next_hit, secs);
        self.cache.truncate(self.base + 1 + v.accepted);
        if k > 0 {
            self.spec.num_drafts += 1;
            self.spec.num_draft_tokens += k;
            self.spec.num_accepted_tokens += v.accepted;
            for slot in self.spec.accepted_per_pos.iter_mut().take(v.accepted) {
                *slot += 1;
            }
        }
        let mut new_tokens = Vec::with_capacity(v.accepted + 1);
        for &t in draft.tokens[..v.accepted].iter().chain(std::iter::once(&v.bonus)) {
            if self.out.len() >= self.max_new {
                break;
            }
            new_tokens.push(t);
            if self.emit(t, is_eog) {
                break;
            }
        }
        if let Some(h) = hidden.filter(|_| drafter.wants_hidden() && !new_tokens.is_empty()) {
            // Row j (position base + j) was followed by new_tokens[j].
            let d = h.len() / (k + 1);
            if h.len() == d * (k + 1) {
                drafter.observe_hidden(self.base, &h[..new_tokens.len() * d], &new_tokens);
            }
        }
        drafter.accept(&new_tokens);
        self.touch_stats();
        new_tokens
    }

    /// Whether the target's passes may return argmax ids instead of logits
    /// (`Model::forward_argmax`): greedy without penalties.
    pub fn argmax_suffices(&self) -> bool {
        self.params.argmax_suffices()
    }

    /// Emits `t`; true when it ends generation.
    fn emit(&mut self, t: u32, is_eog: &dyn Fn(u32) -> bool) -> bool {
        self.out.push(t);
        self.ctx.push(t);
        if is_eog(t) {
            self.stopped_on_eog = true;
        }
        self.stopped_on_eog
    }

    fn touch_stats(&mut self) {
        self.stats.new_tokens = self.out.len();
        if let Some(t) = self.t_decode {
            self.stats.decode_s = t.elapsed().as_secs_f64();
        }
    }
}

/// Row `i`'s sampling distribution from a pass's scores.
fn row_probs(scores: Scores, i: usize, n_vocab: usize, params: &SamplingParams, hist: &[u32]) -> Vec<(u32, f32)> {
    match scores {
        Scores::Logits(l) => probs(&l[i * n_vocab..(i + 1) * n_vocab], params, hist),
        // Passes return ids only when they are all that `probs` would read.
        Scores::Argmax(ids) => vec![(ids[i], 1.0)],
    }
}

/// Generates up to `max_new` tokens after `prompt` with speculative decoding.
/// Output equals `generate::generate` with the same params (greedy: token for
/// token; sampled with a deterministic drafter: token for token for the same
/// seed; sampled draft: same distribution).
#[allow(clippy::too_many_arguments)]
pub fn generate_spec(
    model: &dyn Model,
    drafter: &mut dyn Drafter,
    ctl: &mut Controller,
    prompt: &[u32],
    max_new: usize,
    params: &SamplingParams,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32),
) -> Result<SpecOutput, EngineError> {
    if prompt.is_empty() || max_new == 0 {
        let stats = GenStats { prompt_tokens: prompt.len(), ..Default::default() };
        let spec = SpecStats { accepted_per_pos: vec![0; ctl.max_k], ..Default::default() };
        return Ok(SpecOutput { tokens: Vec::new(), stats, spec, stopped_on_eog: false });
    }
    let mut s = Session::new(model, prompt, max_new, ctl.max_k, params)?;
    ctl.begin_request();
    while !s.is_done() {
        let pass = s.plan(model, drafter, ctl);
        let t = Instant::now();
        let (c, tokens, rows) = (&mut s.cache, &pass.tokens, pass.rows);
        // (hidden states for the drafter, argmax ids instead of logits)
        let (scores, hidden) = match (drafter.wants_hidden(), s.params.argmax_suffices()) {
            (true, true) => {
                let (ids, h) = model.forward_hidden_argmax(c, tokens, rows)?;
                (PassScores::Argmax(ids), Some(h))
            }
            (true, false) => {
                let (l, h) = model.forward_hidden(c, tokens, rows)?;
                (PassScores::Logits(l), Some(h))
            }
            (false, true) => (PassScores::Argmax(model.forward_argmax(c, tokens, rows)?), None),
            (false, false) => (PassScores::Logits(model.forward(c, tokens, rows)?), None),
        };
        let secs = t.elapsed().as_secs_f64();
        for t in s.absorb(model, scores.scores(), hidden.as_deref(), secs, drafter, ctl, is_eog) {
            on_token(t);
        }
    }
    drafter.end();
    s.touch_stats();
    Ok(SpecOutput { tokens: s.out, stats: s.stats, spec: s.spec, stopped_on_eog: s.stopped_on_eog })
}
