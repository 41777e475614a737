//! The MTP drafter: a Multi-Token-Prediction module (DeepSeek's own, or a
//! head made by `specdec distill`) proposes from the target's hidden states.
//!
//! After every verified pass the session hands over the target's post-norm
//! hidden state of each emitted position (`observe_hidden`); the module runs
//! once over those rows, writing its own cache at the same positions, and its
//! last row predicts the token after the bonus (draft 1). Drafts 2..k chain
//! the module's own post-norm output with the previous draft token, one
//! position further each (vLLM's and SGLang's scheme). The module's cache
//! rolls back with the target's: each round truncates it to the target's
//! length before the new rows. Drafts are greedy (deterministic), so the
//! verifier's sampled path stays token-for-token with plain decoding.

use std::sync::Arc;

use super::model_drafter::top_prob;
use super::{Draft, Drafter};
use crate::sampler::argmax;
use crate::{EngineError, KvCache, LogitRows};

/// A module that predicts the token after next from the target's post-norm
/// hidden state and the next token.
pub trait MtpHead: Send + Sync {
    fn n_embd(&self) -> usize;
    /// The module's own cache, position-aligned with the target's.
    fn new_cache(&self, capacity: usize) -> KvCache;
    /// The target token of logit `index` (heads with a reduced draft
    /// vocabulary map their rows back; None past the end).
    fn token(&self, index: usize) -> Option<u32>;
    /// Rows j at positions `cache.len() + j`, each the target hidden
    /// `hidden[j]` with the token `next[j]` that followed it. Returns the
    /// logits of the rows asked for and every row's post-norm hidden state.
    fn forward(
        &self,
        cache: &mut KvCache,
        next: &[u32],
        hidden: &[f32],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>), EngineError>;
    /// Logits of post-norm hidden rows (as `forward` returns them): what
    /// `forward` would have given for those rows, bit for bit.
    fn logits(&self, hidden: &[f32]) -> Vec<f32>;
}

pub struct MtpDrafter {
    mtp: Arc<dyn MtpHead>,
    label: String,
    cache: KvCache,
    /// Post-norm hidden of the module's last row (predicting the token after
    /// the context) and, once asked for, its logits; None when stale.
    head: Option<(Option<Vec<f32>>, Vec<f32>)>,
    /// Stop chaining when the module's top probability falls below this.
    pub min_confidence: f32,
}

impl MtpDrafter {
    /// `label` names the module in `name()` ("mtp" or "mtp:PATH").
    pub fn new(mtp: Arc<dyn MtpHead>, ctx: usize, label: String) -> MtpDrafter {
        let cache = mtp.new_cache(ctx);
        MtpDrafter { mtp, label, cache, head: None, min_confidence: 0.2 }
    }
}

impl Drafter for MtpDrafter {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn begin(&mut self, _prompt: &[u32]) {
        self.cache.truncate(0);
        self.head = None;
    }
    fn accept(&mut self, _new_tokens: &[u32]) {}
    fn wants_hidden(&self) -> bool {
        true
    }

    fn observe_hidden(&mut self, pos0: usize, hidden: &[f32], next: &[u32]) {
        self.head = None;
        if next.is_empty() || pos0 > self.cache.len() || pos0 + next.len() > self.cache.capacity {
            return;
        }
        self.cache.truncate(pos0);
        let d = self.mtp.n_embd();
        // Logits wait for `propose`: a combined drafter may not need them.
        if let Ok((_, hs)) = self.mtp.forward(&mut self.cache, next, hidden, LogitRows::None) {
            let last = hs[(next.len() - 1) * d..].to_vec();
            self.head = Some((None, last));
        }
    }

    fn propose(&mut self, _ctx: &[u32], k: usize) -> Draft {
        let mut d = Draft::default();
        let Some((logits, hidden)) = self.head.as_mut() else { return d };
        let logits = logits.get_or_insert_with(|| self.mtp.logits(hidden));
        let (mut logits, mut hidden) = (logits.clone(), hidden.clone());
        for i in 0..k {
            let conf = top_prob(&logits);
            if conf < self.min_confidence && i > 0 {
                break;
            }
            let Some(t) = self.mtp.token(argmax(&logits) as usize) else { break };
            d.tokens.push(t);
            d.confidence.push(conf);
            if i + 1 < k {
                if self.cache.len() + 1 > self.cache.capacity {
                    break;
                }
                match self.mtp.forward(&mut self.cache, &[t], &hidden, LogitRows::Last) {
                    Ok((l, h)) => (logits, hidden) = (l, h),
                    Err(_) => break,
                }
            }
        }
        d
    }
}
