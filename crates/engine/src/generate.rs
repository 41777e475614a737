//! Plain (non-speculative) generation: prefill the prompt, then one token per
//! forward pass.

use std::time::Instant;

use crate::rng::Rng;
use crate::sampler::{sample, SamplingParams};
use crate::{EngineError, KvCache, LogitRows, Model, PassScores};

#[derive(Clone, Debug, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// Forward passes of the target after prefill.
    pub target_passes: usize,
}

impl GenStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_s.max(1e-9)
    }
    /// Tokens after the first (which prefill produces) per second of decoding.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.new_tokens.saturating_sub(1) as f64 / self.decode_s.max(1e-9)
    }
}

pub struct GenOutput {
    pub tokens: Vec<u32>,
    pub stats: GenStats,
    /// Whether generation ended on an end-of-generation token.
    pub stopped_on_eog: bool,
}

/// Generates up to `max_new` tokens after `prompt`. `is_eog` ends generation
/// (the end token is included in the output). `on_token` sees each token.
pub fn generate(
    model: &dyn Model,
    prompt: &[u32],
    max_new: usize,
    params: &SamplingParams,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32),
) -> Result<GenOutput, EngineError> {
    let mut stats = GenStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut out = Vec::with_capacity(max_new);
    let mut stopped_on_eog = false;
    if prompt.is_empty() || max_new == 0 {
        return Ok(GenOutput { tokens: out, stats, stopped_on_eog });
    }
    let mut cache = model.new_cache(prompt.len() + max_new);
    if prompt.len() + max_new > cache.capacity {
        return Err(EngineError::ContextFull { need: prompt.len() + max_new, capacity: cache.capacity });
    }
    let mut rng = Rng::new(params.seed);
    let mut history: Vec<u32> = prompt.to_vec();
    // Greedy without penalties reads only the argmax: the pass finds it
    // without writing out the logits.
    let argmax_only = params.argmax_suffices();
    let pass = |cache: &mut KvCache, tokens: &[u32]| -> Result<PassScores, EngineError> {
        Ok(if argmax_only {
            PassScores::Argmax(model.forward_argmax(cache, tokens, LogitRows::Last)?)
        } else {
            PassScores::Logits(model.forward(cache, tokens, LogitRows::Last)?)
        })
    };
    let t0 = Instant::now();
    let mut scores = pass(&mut cache, prompt)?;
    stats.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    loop {
        let t = match &scores {
            PassScores::Argmax(ids) => ids[0],
            PassScores::Logits(logits) => sample(logits, params, &history, &mut rng),
        };
        out.push(t);
        history.push(t);
        on_token(t);
        if is_eog(t) {
            stopped_on_eog = true;
            break;
        }
        if out.len() >= max_new {
            break;
        }
        scores = pass(&mut cache, &[t])?;
        stats.target_passes += 1;
    }
    stats.decode_s = t1.elapsed().as_secs_f64();
    stats.new_tokens = out.len();
    Ok(GenOutput { tokens: out, stats, stopped_on_eog })
}
