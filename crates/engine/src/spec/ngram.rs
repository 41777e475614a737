//! Prompt-lookup decoding: find the most recent earlier occurrence of the last
//! n tokens (n from `max_n` down to `min_n`) in prompt + output and propose
//! the tokens that followed it.

use super::{match_class, Draft, Drafter};

/// Matches are measured up to this many tokens.
const MAX_MATCH: usize = 32;

pub struct NgramDrafter {
    pub min_n: usize,
    pub max_n: usize,
}

impl Default for NgramDrafter {
    fn default() -> Self {
        NgramDrafter { min_n: 2, max_n: 4 }
    }
}

impl Drafter for NgramDrafter {
    fn name(&self) -> String {
        format!("ngram({}..{})", self.min_n, self.max_n)
    }
    fn begin(&mut self, _prompt: &[u32]) {}
    fn accept(&mut self, _new_tokens: &[u32]) {}

    fn propose(&mut self, ctx: &[u32], k: usize) -> Draft {
        let mut d = Draft::default();
        if k == 0 {
            return d;
        }
        for n in (self.min_n.max(1)..=self.max_n).rev() {
            if ctx.len() <= n {
                continue;
            }
            let pat = &ctx[ctx.len() - n..];
            // Most recent earlier occurrence with at least one following token.
            let found = (0..ctx.len() - n).rev().find(|&s| &ctx[s..s + n] == pat);
            if let Some(s) = found {
                let follow = &ctx[s + n..(s + n + k).min(ctx.len())];
                d.tokens.extend_from_slice(follow);
                // Longer matches are more trustworthy.
                let conf = n as f32 / (n as f32 + 1.0);
                d.confidence = vec![conf; d.tokens.len()];
                // How far the match reaches back (its class for the controller).
                let back = (1..=MAX_MATCH - n).take_while(|&i| i <= s && ctx[s - i] == ctx[ctx.len() - n - i]).count();
                d.class = match_class(n + back);
                return d;
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_match() {
        let mut g = NgramDrafter::default();
        let ctx = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3];
        let d = g.propose(&ctx, 3);
        assert_eq!(d.tokens, vec![7, 8, 5]);
        assert!(g.propose(&[4, 5, 6], 3).is_empty());
        // Near the end of the context the proposal is shorter.
        assert_eq!(g.propose(&[1, 2, 3, 1, 2], 4).tokens, vec![3, 1, 2]);
    }

    #[test]
    fn the_class_grows_with_how_far_the_match_reaches_back() {
        let mut g = NgramDrafter::default();
        // "1 2 3" matches, and the tokens before it (9, 5) differ.
        let d = g.propose(&[9, 1, 2, 3, 7, 5, 1, 2, 3], 2);
        assert_eq!((d.tokens.clone(), d.class), (vec![7, 5], match_class(3)));
        // A repeated 12-token stretch: the match reaches 11 tokens back.
        let unit: Vec<u32> = (10..22).collect();
        let mut ctx = unit.clone();
        ctx.extend_from_slice(&unit[..11]);
        let d = g.propose(&ctx, 3);
        assert_eq!(d.tokens, vec![21, 10, 11]);
        assert_eq!(d.class, match_class(11));
    }
}
