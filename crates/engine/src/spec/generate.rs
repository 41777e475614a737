//! The speculative decoding loop.
//!
//! Invariant: the target cache holds every context token except the last
//! emitted one (`last`). Each step runs `[last, d1..dk]` through the target
//! with logits for all k+1 rows, verifies, keeps `last, d1..da` in the cache
//! and emits `d1..da, bonus`. With k = 0 this is exactly plain decoding.

use std::time::Instant;

use super::verify::{verify, Dist};
use super::{Controller, Drafter};
use crate::generate::GenStats;
use crate::rng::Rng;
use crate::sampler::{probs, SamplingParams};
use crate::{EngineError, LogitRows, Model};

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
    let mut stats = GenStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut spec = SpecStats { accepted_per_pos: vec![0; ctl.max_k], ..Default::default() };
    let mut out: Vec<u32> = Vec::with_capacity(max_new);
    let mut stopped_on_eog = false;
    if prompt.is_empty() || max_new == 0 {
        return Ok(SpecOutput { tokens: out, stats, spec, stopped_on_eog });
    }
    // Room for drafts beyond the output when the model's context allows; near
    // the context limit drafts shrink rather than fail (plain decoding would fit).
    let mut cache = model.new_cache(prompt.len() + max_new + ctl.max_k + 1);
    if prompt.len() + max_new > cache.capacity {
        return Err(EngineError::ContextFull { need: prompt.len() + max_new, capacity: cache.capacity });
    }
    let vocab = model.vocab_size() as u32;
    let mut rng = Rng::new(params.seed);
    let mut ctx: Vec<u32> = prompt.to_vec();

    let t0 = Instant::now();
    let logits = model.forward(&mut cache, prompt, LogitRows::Last)?;
    stats.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    drafter.begin(prompt);

    let first = {
        let p = probs(&logits, params, &ctx);
        verify(&[], &[], &[p], &mut rng).bonus
    };
    let mut emit = |t: u32, out: &mut Vec<u32>, ctx: &mut Vec<u32>| -> bool {
        out.push(t);
        ctx.push(t);
        on_token(t);
        is_eog(t)
    };
    if emit(first, &mut out, &mut ctx) {
        stopped_on_eog = true;
    }
    drafter.accept(&[first]);

    while !stopped_on_eog && out.len() < max_new {
        let remaining = max_new - out.len();
        // Never draft past the token budget: the bonus always comes on top.
        let room = cache.capacity.saturating_sub(cache.len() + 1);
        let budget = ctl.draft_budget().min(remaining - 1).min(room);
        let mut draft = if budget > 0 {
            let td = Instant::now();
            let mut d = drafter.propose(&ctx, budget);
            let dt = td.elapsed().as_secs_f64();
            spec.draft_s += dt;
            d.truncate(budget);
            ctl.observe_draft(d.len(), dt);
            d
        } else {
            Default::default()
        };
        let k = ctl.choose(&draft.confidence);
        draft.truncate(k);
        if !draft.q.is_empty() && draft.q.len() != draft.len() {
            draft.q.clear();
        }

        let last = *ctx.last().expect("context is never empty");
        let mut batch = Vec::with_capacity(k + 1);
        batch.push(last);
        // Out-of-vocabulary draft ids cannot be fed to the target: cut the
        // draft there (they would be rejected anyway).
        let valid = draft.tokens.iter().take_while(|&&t| t < vocab).count();
        draft.truncate(valid);
        let k = draft.len();
        batch.extend_from_slice(&draft.tokens);

        let base = cache.len();
        let tv = Instant::now();
        let logits = model.forward(&mut cache, &batch, LogitRows::All)?;
        let secs = tv.elapsed().as_secs_f64();
        stats.target_passes += 1;

        let n_vocab = model.vocab_size();
        let mut hist = ctx.clone();
        let p: Vec<Dist> = (0..=k)
            .map(|i| {
                let d = probs(&logits[i * n_vocab..(i + 1) * n_vocab], params, &hist);
                if i < k {
                    hist.push(draft.tokens[i]);
                }
                d
            })
            .collect();
        let v = verify(&draft.tokens, &draft.q, &p, &mut rng);
        ctl.observe(k, v.accepted, secs);
        cache.truncate(base + 1 + v.accepted);
        if k > 0 {
            spec.num_drafts += 1;
            spec.num_draft_tokens += k;
            spec.num_accepted_tokens += v.accepted;
            for slot in spec.accepted_per_pos.iter_mut().take(v.accepted) {
                *slot += 1;
            }
        }
        let mut new_tokens = Vec::with_capacity(v.accepted + 1);
        for &t in draft.tokens[..v.accepted].iter().chain(std::iter::once(&v.bonus)) {
            if out.len() >= max_new {
                break;
            }
            new_tokens.push(t);
            if emit(t, &mut out, &mut ctx) {
                stopped_on_eog = true;
                break;
            }
        }
        drafter.accept(&new_tokens);
    }
    drafter.end();
    stats.decode_s = t1.elapsed().as_secs_f64();
    stats.new_tokens = out.len();
    Ok(SpecOutput { tokens: out, stats, spec, stopped_on_eog })
}
