//! The drafter interface.

use super::controller::Budget;

/// A proposal of up to k tokens.
#[derive(Clone, Debug, Default)]
pub struct Draft {
    pub tokens: Vec<u32>,
    /// Sampled drafts carry the draft distribution q each token was drawn
    /// from, as (token, probability) pairs; deterministic drafts leave it empty.
    pub q: Vec<Vec<(u32, f32)>>,
    /// The drafter's confidence in each token (0..1), for the controller.
    pub confidence: Vec<f32>,
    /// Which of a combined drafter's sources made the draft (0 for drafters
    /// with one source); the controller keeps statistics per source.
    pub source: usize,
    /// How strong the drafter's evidence was (`match_class` of a match
    /// length, `confidence_class` of a head's confidence; 0 without either):
    /// the controller keeps acceptance per (source, class), so a long match
    /// drafts long while a one-token match in the same request drafts short.
    pub class: usize,
}

/// Classes of `Draft::class`.
pub const EVIDENCE_CLASSES: usize = 6;

/// The class of a match of `len` tokens: 1, 2, 3-4, 5-8, 9-16, longer.
pub fn match_class(len: usize) -> usize {
    match len {
        0..=1 => 0,
        2 => 1,
        3..=4 => 2,
        5..=8 => 3,
        9..=16 => 4,
        _ => 5,
    }
}

/// The class of a drafter's confidence in its first token (0..1).
pub fn confidence_class(c: f32) -> usize {
    ((c.clamp(0.0, 1.0) * EVIDENCE_CLASSES as f32) as usize).min(EVIDENCE_CLASSES - 1)
}

impl Draft {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    /// Keeps the first `n` tokens.
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
        self.q.truncate(n);
        self.confidence.truncate(n);
    }
}

/// Proposes continuations of a token sequence.
///
/// Call order per request: `begin(prompt)`, then repeatedly `propose(context,
/// k)` and `accept(new_tokens)` with the tokens the verifier emitted (accepted
/// draft tokens plus the bonus), then `end()`.
pub trait Drafter {
    fn name(&self) -> String;
    fn begin(&mut self, prompt: &[u32]);
    /// Up to `k` tokens continuing `context` (prompt + output so far).
    fn propose(&mut self, context: &[u32], k: usize) -> Draft;
    /// `propose` within the controller's per-source budget: a drafter with
    /// several sources (`Draft::source`) asks each for its own share.
    fn propose_within(&mut self, context: &[u32], budget: &Budget) -> Draft {
        self.propose(context, budget.max)
    }
    /// Tokens appended to the context since the last call.
    fn accept(&mut self, new_tokens: &[u32]);
    /// End of the request (drafters with history keep what they learned).
    fn end(&mut self) {}
    /// Whether the drafter builds on the target's hidden states (MTP); the
    /// session then runs the target with `Model::forward_hidden`.
    fn wants_hidden(&self) -> bool {
        false
    }
    /// The target's post-norm hidden states of the positions `pos0..` just
    /// verified (`n_embd` floats each), each with the token that followed it;
    /// called before `accept` with the same tokens.
    fn observe_hidden(&mut self, pos0: usize, hidden: &[f32], next: &[u32]) {
        let _ = (pos0, hidden, next);
    }
    /// Whether `propose` samples (and fills `Draft::q`).
    fn is_sampled(&self) -> bool {
        false
    }
}
