//! The MTP drafter: a Multi-Token-Prediction module (DeepSeek's own, or a
//! head made by `specdec distill`) proposes from the target's hidden states.
//!
//! After every verified pass the session hands over the target's post-norm
//! hidden state of each emitted position (`observe_hidden`); before it next
//! drafts, the module runs once over all rows handed over since it last ran,
//! writing its own cache at the same positions, and its last row predicts the
//! token after the bonus (draft 1). Drafts 2..k chain
//! the module's own post-norm output with the previous draft token, one
//! position further each (vLLM's and SGLang's scheme). The module's cache
//! rolls back with the target's: each round truncates it to the target's
//! length before the new rows. Drafts are greedy (deterministic), so the
//! verifier's sampled path stays token-for-token with plain decoding.

use std::sync::Arc;

use super::model_drafter::top_prob;
use super::{confidence_class, Draft, Drafter};
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
    /// Some(w) when the module is one sliding-window block: a row reads only
    /// the keys of the w positions up to its own, and a row's keys and values
    /// depend on its own input alone, so rows w or more behind the last one
    /// run need not be run at all. None: every row matters.
    fn window(&self) -> Option<usize> {
        None
    }
}

pub struct MtpDrafter {
    mtp: Arc<dyn MtpHead>,
    label: String,
    cache: KvCache,
    /// Positions of the module's cache that hold verified rows (past them:
    /// rows written while chaining a draft, dropped at the next observation).
    synced: usize,
    /// Verified rows not yet run (hidden states and the tokens that followed
    /// them), at positions `synced..`: the module catches up in one pass when
    /// it next drafts, so a combined drafter whose other part keeps winning
    /// pays for the module rarely, and then for many rows at once.
    pending_hidden: Vec<f32>,
    pending_next: Vec<u32>,
    /// Post-norm hidden of the module's last row (predicting the token after
    /// the context) and, once asked for, its logits; None when stale.
    head: Option<(Option<Vec<f32>>, Vec<f32>)>,
    /// Stop chaining when the module's top probability falls below this.
    pub min_confidence: f32,
    /// Leave rows outside a sliding-window module's reach unrun
    /// (`MtpHead::window`); off only to test that skipping changes nothing.
    pub skip_unread: bool,
    /// Positions below this may be unrun (skipped as unread).
    skipped_to: usize,
}

impl MtpDrafter {
    /// `label` names the module in `name()` ("mtp" or "mtp:PATH").
    pub fn new(mtp: Arc<dyn MtpHead>, ctx: usize, label: String) -> MtpDrafter {
        let cache = mtp.new_cache(ctx);
        MtpDrafter {
            mtp,
            label,
            cache,
            synced: 0,
            pending_hidden: Vec::new(),
            pending_next: Vec::new(),
            head: None,
            min_confidence: 0.2,
            skip_unread: true,
            skipped_to: 0,
        }
    }

    /// Runs the module over the pending verified rows; false when it has
    /// nothing to draft from.
    fn catch_up(&mut self) -> bool {
        if self.pending_next.is_empty() {
            return self.head.is_some();
        }
        self.cache.truncate(self.synced);
        let mut next = std::mem::take(&mut self.pending_next);
        let mut hidden = std::mem::take(&mut self.pending_hidden);
        let d = self.mtp.n_embd();
        // A long prompt's first catch-up: rows no later row can attend to
        // are left unrun (their cache rows stay unwritten and unread).
        let skip = match self.mtp.window() {
            Some(w) if self.skip_unread => next.len().saturating_sub(w),
            _ => 0,
        };
        if skip > 0 {
            self.cache.reserve(self.synced + skip);
            self.cache.set_len(self.synced + skip);
            self.synced += skip;
            self.skipped_to = self.synced;
            next.drain(..skip);
            hidden.drain(..skip * d);
        }
        // Logits wait for `propose`'s first token.
        match self.mtp.forward(&mut self.cache, &next, &hidden, LogitRows::None) {
            Ok((_, hs)) => {
                self.synced += next.len();
                self.head = Some((None, hs[(next.len() - 1) * d..].to_vec()));
                true
            }
            Err(_) => {
                self.cache.truncate(self.synced);
                self.head = None;
                false
            }
        }
    }
}

impl Drafter for MtpDrafter {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn begin(&mut self, _prompt: &[u32]) {
        self.cache.truncate(0);
        self.synced = 0;
        self.skipped_to = 0;
        self.pending_hidden.clear();
        self.pending_next.clear();
        self.head = None;
    }
    fn accept(&mut self, _new_tokens: &[u32]) {}
    fn wants_hidden(&self) -> bool {
        true
    }

    fn observe_hidden(&mut self, pos0: usize, hidden: &[f32], next: &[u32]) {
        self.head = None;
        let d = self.mtp.n_embd();
        if next.is_empty() || hidden.len() < next.len() * d || pos0 + next.len() > self.cache.capacity {
            return;
        }
        if pos0 < self.synced {
            // The target rolled back below what the module ran: run again
            // from there, unless rows it would read were skipped.
            if self.skipped_to > 0 && pos0 < self.skipped_to + self.mtp.window().unwrap_or(0) {
                self.pending_hidden.clear();
                self.pending_next.clear();
                return;
            }
            self.synced = pos0;
            self.pending_hidden.clear();
            self.pending_next.clear();
        }
        let keep = pos0 - self.synced;
        if keep > self.pending_next.len() {
            // A gap (positions never observed): nothing to draft from until
            // the next request.
            self.pending_hidden.clear();
            self.pending_next.clear();
            return;
        }
        self.pending_next.truncate(keep);
        self.pending_hidden.truncate(keep * d);
        self.pending_next.extend_from_slice(next);
        self.pending_hidden.extend_from_slice(&hidden[..next.len() * d]);
    }

    fn propose(&mut self, _ctx: &[u32], k: usize) -> Draft {
        let mut d = Draft::default();
        if !self.catch_up() {
            return d;
        }
        // Rows chained by an earlier proposal are not verified: chain afresh.
        self.cache.truncate(self.synced);
        let Some((logits, hidden)) = self.head.as_mut() else { return d };
        let logits = logits.get_or_insert_with(|| self.mtp.logits(hidden));
        let (mut logits, mut hidden) = (logits.clone(), hidden.clone());
        for i in 0..k {
            let conf = top_prob(&logits);
            if conf < self.min_confidence && i > 0 {
                break;
            }
            let Some(t) = self.mtp.token(argmax(&logits) as usize) else { break };
            if i == 0 {
                d.class = confidence_class(conf);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tiny_gemma3_with_head;
    use crate::rng::Rng;

    #[test]
    fn catching_up_late_drafts_what_running_every_step_drafts() {
        let (_model, head) = tiny_gemma3_with_head(4, 6);
        let d = head.n_embd();
        // The eager drafter runs every row; the lazy one catches up over
        // more rows than the head's window (8), so it skips some.
        let mut eager = MtpDrafter::new(head.clone(), 512, "mtp".into());
        eager.skip_unread = false;
        let mut lazy = MtpDrafter::new(head, 512, "mtp".into());
        let mut rng = Rng::new(3);
        let mut rows = |n: usize| -> Vec<f32> { (0..n * d).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect() };
        let mut ctx: Vec<u32> = (0..20).map(|i| (i * 7 % 50) as u32 + 3).collect();
        for dr in [&mut eager, &mut lazy] {
            dr.begin(&ctx);
        }
        let h = rows(ctx.len() - 1);
        eager.observe_hidden(0, &h, &ctx[1..]);
        lazy.observe_hidden(0, &h, &ctx[1..]);
        let mut compared = 0;
        for step in 0..30 {
            let a = eager.propose(&ctx, 3);
            assert!(!a.is_empty());
            if step % 4 == 3 {
                let b = lazy.propose(&ctx, 3);
                assert_eq!(a.tokens, b.tokens, "step {step}");
                assert_eq!(a.confidence, b.confidence, "step {step}");
                compared += 1;
            }
            // The target emits 1-3 tokens (accepted drafts plus the bonus).
            let n = 1 + step % 3;
            let new: Vec<u32> = (0..n).map(|j| ((step * 5 + j * 11) % 60) as u32 + 2).collect();
            let pos0 = ctx.len() - 1;
            ctx.extend_from_slice(&new);
            let h = rows(n);
            eager.observe_hidden(pos0, &h, &new);
            lazy.observe_hidden(pos0, &h, &new);
        }
        assert_eq!(compared, 7);
    }
}
