//! A draft model: any model specdec runs, sharing the target's vocabulary.

use specdec_tokenizer::Tokenizer;

use super::{Draft, Drafter};
use crate::rng::Rng;
use crate::sampler::{argmax, draw, probs, SamplingParams};
use crate::{KvCache, LogitRows, Model};

/// llama.cpp's rules for a draft model's vocabulary: same tokenizer model,
/// same BOS/EOS handling, sizes within 128, identical token text from id 5 on.
pub fn check_vocab_compat(target: &Tokenizer, draft: &Tokenizer) -> Result<(), String> {
    if target.model != draft.model {
        return Err(format!("tokenizer models differ: target {:?}, draft {:?}", target.model, draft.model));
    }
    if target.add_bos != draft.add_bos || target.bos != draft.bos {
        return Err(format!(
            "BOS handling differs: target {:?} (add {}), draft {:?} (add {})",
            target.bos, target.add_bos, draft.bos, draft.add_bos
        ));
    }
    if target.add_eos != draft.add_eos || target.eos != draft.eos {
        return Err(format!("EOS handling differs: target {:?}, draft {:?}", target.eos, draft.eos));
    }
    let (nt, nd) = (target.vocab_size(), draft.vocab_size());
    if nt.abs_diff(nd) > 128 {
        return Err(format!("vocabulary sizes differ by more than 128: target {nt}, draft {nd}"));
    }
    for id in 5..nt.min(nd) as u32 {
        if target.token_text(id) != draft.token_text(id) {
            return Err(format!(
                "token {id} differs: target {:?}, draft {:?}",
                target.token_text(id).unwrap_or_default(),
                draft.token_text(id).unwrap_or_default()
            ));
        }
    }
    Ok(())
}

pub struct ModelDrafter {
    model: Box<dyn Model>,
    cache: KvCache,
    /// Tokens whose keys are in `cache`, in order.
    cached: Vec<u32>,
    pub params: SamplingParams,
    /// Stop drafting when the draft model's top probability falls below this.
    pub min_confidence: f32,
    rng: Rng,
    label: String,
}

impl ModelDrafter {
    pub fn new(model: Box<dyn Model>, params: SamplingParams, ctx: usize, label: String) -> ModelDrafter {
        let cache = model.new_cache(ctx);
        ModelDrafter {
            rng: Rng::new(params.seed ^ 0xD1AF7),
            model,
            cache,
            cached: Vec::new(),
            params,
            min_confidence: 0.3,
            label,
        }
    }
}

/// Probability of the most likely token at temperature 1.
pub(crate) fn top_prob(logits: &[f32]) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    1.0 / sum
}

impl Drafter for ModelDrafter {
    fn name(&self) -> String {
        format!("model:{}", self.label)
    }
    fn is_sampled(&self) -> bool {
        !self.params.is_greedy()
    }
    fn begin(&mut self, _prompt: &[u32]) {
        self.cache.truncate(0);
        self.cached.clear();
    }
    fn accept(&mut self, _new_tokens: &[u32]) {}

    fn propose(&mut self, ctx: &[u32], k: usize) -> Draft {
        let mut d = Draft::default();
        if k == 0 || ctx.is_empty() || ctx.len() + k > self.cache.capacity {
            return d;
        }
        // Roll the draft cache back to what still matches the context.
        let common = self.cached.iter().zip(ctx).take_while(|(a, b)| a == b).count().min(ctx.len() - 1);
        self.cache.truncate(common);
        self.cached.truncate(common);
        let Ok(mut logits) = self.model.forward(&mut self.cache, &ctx[common..], LogitRows::Last) else {
            return d;
        };
        self.cached.extend_from_slice(&ctx[common..]);
        let mut history = ctx.to_vec();
        for i in 0..k {
            let conf = top_prob(&logits);
            if conf < self.min_confidence && i > 0 {
                break;
            }
            let t = if self.params.is_greedy() {
                argmax(&logits)
            } else {
                let q = probs(&logits, &self.params, &history);
                let t = draw(&q, &mut self.rng);
                d.q.push(q);
                t
            };
            d.tokens.push(t);
            d.confidence.push(conf);
            history.push(t);
            if i + 1 < k {
                match self.model.forward(&mut self.cache, &[t], LogitRows::Last) {
                    Ok(l) => {
                        self.cached.push(t);
                        logits = l;
                    }
                    Err(_) => break,
                }
            }
        }
        d
    }
}
