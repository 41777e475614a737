//! `--drafter auto`: per step, the better of a suffix match and an MTP head.
//!
//! A suffix match (text the request or earlier outputs already contain: RAG,
//! summarization, code edits, and the repetition of small models) predicts
//! many tokens nearly for free, so it wins when it exists (a match of at
//! least `min_match` tokens; 1 measured best on Spec-Bench with the default
//! model, where a 3-token minimum halved the mean accepted length); otherwise
//! the MTP head drafts. Both parts see every
//! step (the suffix trie every token, the head every verified hidden state),
//! so either can take over at the next step. Drafts are deterministic, and
//! the adaptive controller trims whichever was chosen.

use super::controller::Budget;
use super::mtp::MtpDrafter;
use super::suffix::SuffixDrafter;
use super::{Draft, Drafter};

pub struct AutoDrafter {
    pub suffix: SuffixDrafter,
    pub mtp: MtpDrafter,
    /// The suffix draft is used when its match is at least this long.
    pub min_match: usize,
    /// Steps drafted by each part (suffix, mtp), for reports.
    pub chosen: [usize; 2],
}

impl AutoDrafter {
    pub fn new(suffix: SuffixDrafter, mtp: MtpDrafter) -> AutoDrafter {
        AutoDrafter { suffix, mtp, min_match: 1, chosen: [0; 2] }
    }
}

impl Drafter for AutoDrafter {
    fn name(&self) -> String {
        format!("auto({}+{})", self.suffix.name(), self.mtp.name())
    }
    fn begin(&mut self, prompt: &[u32]) {
        self.suffix.begin(prompt);
        self.mtp.begin(prompt);
    }
    fn propose(&mut self, context: &[u32], k: usize) -> Draft {
        self.propose_within(context, &Budget::uniform(k))
    }
    /// The suffix part (source 0) and the head (source 1) each within their
    /// own budget: the head's tokens cost a share of a target pass, the
    /// suffix draft's next to nothing.
    fn propose_within(&mut self, context: &[u32], budget: &Budget) -> Draft {
        let s = self.suffix.propose(context, budget.of(0));
        if !s.is_empty() && self.suffix.last_match_len >= self.min_match {
            self.chosen[0] += 1;
            return s;
        }
        let m = self.mtp.propose(context, budget.of(1));
        if m.is_empty() {
            self.chosen[0] += usize::from(!s.is_empty());
            return s;
        }
        self.chosen[1] += 1;
        Draft { source: 1, ..m }
    }
    fn accept(&mut self, new_tokens: &[u32]) {
        self.suffix.accept(new_tokens);
        self.mtp.accept(new_tokens);
    }
    fn end(&mut self) {
        self.suffix.end();
        self.mtp.end();
    }
    fn wants_hidden(&self) -> bool {
        true
    }
    fn observe_hidden(&mut self, pos0: usize, hidden: &[f32], next: &[u32]) {
        self.mtp.observe_hidden(pos0, hidden, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tiny_gemma3_with_head;
    use crate::rng::Rng;

    #[test]
    fn a_suffix_match_drafts_otherwise_the_head() {
        let (_model, head) = tiny_gemma3_with_head(3, 5);
        let d = head.n_embd();
        let mut auto = AutoDrafter::new(SuffixDrafter::default(), MtpDrafter::new(head, 256, "mtp".into()));
        let mut rng = Rng::new(9);
        let mut hidden =
            |rows: usize| -> Vec<f32> { (0..rows * d).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect() };
        // A prompt whose last token never occurred before: no suffix match.
        let mut ctx: Vec<u32> = (3..40).collect();
        auto.begin(&ctx);
        // Hidden state j is followed by token j + 1, as the session hands them over.
        auto.observe_hidden(0, &hidden(ctx.len() - 1), &ctx[1..]);
        let draft = auto.propose(&ctx, 4);
        assert!(!draft.is_empty() && draft.source == 1, "no match: the head drafts ({draft:?})");
        assert_eq!(auto.chosen, [0, 1]);
        // Repeat an earlier token: the suffix trie continues it.
        ctx.push(10);
        auto.observe_hidden(ctx.len() - 2, &hidden(1), &[10]);
        auto.accept(&[10]);
        let draft = auto.propose(&ctx, 4);
        assert_eq!(draft.source, 0);
        assert_eq!(draft.tokens.first(), Some(&11), "the suffix continues 10 with 11");
        assert_eq!(auto.chosen, [1, 1]);
    }
}
