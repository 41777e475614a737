//! Suffix drafter (after SuffixDecoding / SAM-Decoding): a trie of every
//! suffix of the token stream, truncated to `depth`, with occurrence counts.
//! To draft, match the longest suffix of the context in the trie, then follow
//! the most frequent continuation while its empirical probability stays above
//! a threshold: long, well-attested matches give long drafts, weak ones short.
//!
//! Two tries: one for the current request (prompt + output) and one for the
//! outputs of earlier requests in this process (bounded: cleared when it
//! exceeds `max_history_nodes`).

use std::collections::HashMap;

use super::{match_class, Draft, Drafter};

#[derive(Default)]
struct Node {
    count: u32,
    /// Stream position of this node's latest occurrence.
    last: u32,
    children: HashMap<u32, u32>,
}

struct Trie {
    nodes: Vec<Node>,
    depth: usize,
    /// Nodes of the suffixes ending at the last inserted token (depth < max).
    active: Vec<u32>,
    /// Tokens pushed so far.
    pos: u32,
}

impl Trie {
    fn new(depth: usize) -> Trie {
        Trie { nodes: vec![Node::default()], depth, active: Vec::new(), pos: 0 }
    }

    fn clear(&mut self) {
        self.nodes.truncate(1);
        self.nodes[0] = Node::default();
        self.active.clear();
        self.pos = 0;
    }

    fn child_or_insert(&mut self, node: u32, tok: u32) -> u32 {
        if let Some(&c) = self.nodes[node as usize].children.get(&tok) {
            return c;
        }
        let id = self.nodes.len() as u32;
        self.nodes.push(Node::default());
        self.nodes[node as usize].children.insert(tok, id);
        id
    }

    /// Appends one token to the stream: every suffix ending here gains it.
    fn push(&mut self, tok: u32) {
        let mut next = Vec::with_capacity(self.active.len() + 1);
        let mut starts = std::mem::take(&mut self.active);
        starts.push(0);
        for (i, &n) in starts.iter().enumerate() {
            // Suffix lengths are starts.len() - i; drop those at full depth.
            if starts.len() - i > self.depth {
                continue;
            }
            let c = self.child_or_insert(n, tok);
            self.nodes[c as usize].count += 1;
            self.nodes[c as usize].last = self.pos;
            next.push(c);
        }
        self.active = next;
        // Only ties use it: a wrap (after 4e9 tokens) costs nothing else.
        self.pos = self.pos.wrapping_add(1);
    }

    /// The node of the longest suffix of `ctx` (at most half the depth, so
    /// the walk has room to continue) present with a continuation, and its
    /// length.
    fn longest_match(&self, ctx: &[u32]) -> Option<(u32, usize)> {
        let max = (self.depth / 2).min(ctx.len());
        for len in (1..=max).rev() {
            let mut n = 0u32;
            let mut ok = true;
            for &t in &ctx[ctx.len() - len..] {
                match self.nodes[n as usize].children.get(&t) {
                    Some(&c) => n = c,
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok && !self.nodes[n as usize].children.is_empty() {
                return Some((n, len));
            }
        }
        None
    }

    /// Most frequent path from `node` (on ties the continuation seen last),
    /// up to `k` tokens, while the running product of branch probabilities
    /// `p` stays >= `min_prob`. Returns false if it stopped on probability
    /// (true: out of depth or budget).
    fn walk(&self, mut node: u32, k: usize, min_prob: f32, p: &mut f32, d: &mut Draft) -> bool {
        while d.tokens.len() < k {
            let n = &self.nodes[node as usize];
            let total: u32 = n.children.values().map(|&c| self.nodes[c as usize].count).sum();
            // Ties go to the latest: text tends to repeat what it said last
            // (replayed with fixed pass costs: ~1 % less verify time on
            // summarization and rag, the same elsewhere).
            let best = n
                .children
                .iter()
                .map(|(&t, &c)| (self.nodes[c as usize].count, self.nodes[c as usize].last, t, c))
                .max();
            let Some((cnt, _, tok, child)) = best else { return true };
            let np = *p * cnt as f32 / total.max(1) as f32;
            if np < min_prob {
                return false;
            }
            *p = np;
            d.tokens.push(tok);
            d.confidence.push(np);
            node = child;
        }
        true
    }
}

pub struct SuffixDrafter {
    request: Trie,
    history: Trie,
    pub min_prob: f32,
    pub max_history_nodes: usize,
    output_start: usize,
    context_len: usize,
    outputs: Vec<u32>,
    /// Length of the suffix match the last proposal started from (0: none).
    pub last_match_len: usize,
}

impl SuffixDrafter {
    pub fn new(depth: usize) -> SuffixDrafter {
        SuffixDrafter {
            request: Trie::new(depth.max(2)),
            history: Trie::new(depth.max(2)),
            min_prob: 0.1,
            max_history_nodes: 4_000_000,
            output_start: 0,
            context_len: 0,
            last_match_len: 0,
            outputs: Vec::new(),
        }
    }
}

impl Default for SuffixDrafter {
    fn default() -> Self {
        SuffixDrafter::new(24)
    }
}

impl Drafter for SuffixDrafter {
    fn name(&self) -> String {
        format!("suffix(depth {})", self.request.depth)
    }

    fn begin(&mut self, prompt: &[u32]) {
        self.request.clear();
        for &t in prompt {
            self.request.push(t);
        }
        self.output_start = prompt.len();
        self.context_len = prompt.len();
        self.outputs.clear();
    }

    fn accept(&mut self, new_tokens: &[u32]) {
        for &t in new_tokens {
            self.request.push(t);
            self.outputs.push(t);
        }
        self.context_len += new_tokens.len();
    }

    fn propose(&mut self, ctx: &[u32], k: usize) -> Draft {
        let mut d = Draft::default();
        self.last_match_len = 0;
        if k == 0 {
            return d;
        }
        // Match, walk the most frequent continuation, and when the walk runs
        // out of trie depth, match again on the context extended by the draft.
        let mut p = 1f32;
        let mut ext: Vec<u32> = Vec::new();
        while d.tokens.len() < k {
            ext.clear();
            let tail = ctx.len().saturating_sub(self.request.depth);
            ext.extend_from_slice(&ctx[tail..]);
            ext.extend_from_slice(&d.tokens);
            let req = self.request.longest_match(&ext);
            let hist = self.history.longest_match(&ext);
            // Prefer the longer match; the request's own text on ties.
            let (trie, node, len) = match (req, hist) {
                (Some((_, rl)), Some((hn, hl))) if hl > rl => (&self.history, hn, hl),
                (Some((rn, rl)), _) => (&self.request, rn, rl),
                (None, Some((hn, hl))) => (&self.history, hn, hl),
                (None, None) => break,
            };
            if d.tokens.is_empty() {
                self.last_match_len = len;
                d.class = match_class(len);
            }
            let before = d.tokens.len();
            if !trie.walk(node, k, self.min_prob, &mut p, &mut d) || d.tokens.len() == before {
                break;
            }
        }
        d
    }

    fn end(&mut self) {
        if self.history.nodes.len() > self.max_history_nodes {
            self.history.clear();
        }
        // Earlier outputs become history (separated so matches do not span requests).
        self.history.active.clear();
        for &t in &self.outputs {
            self.history.push(t);
        }
        self.history.active.clear();
        self.outputs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_most_frequent_continuation() {
        let mut s = SuffixDrafter::new(8);
        s.min_prob = 0.0;
        let prompt = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 5, 1, 2];
        s.begin(&prompt);
        let d = s.propose(&prompt, 3);
        // "1 2" is followed by 3 three times; "1 2 3" by 4 twice and 5 once.
        assert_eq!(d.tokens, vec![3, 4, 1]);
        assert!(d.confidence[1] < d.confidence[0]);
        // The longest suffix with a continuation is "1 2" ("5 1 2" has none).
        assert_eq!(d.class, match_class(2));
    }

    #[test]
    fn ties_go_to_the_latest_continuation() {
        let mut s = SuffixDrafter::new(8);
        s.min_prob = 0.0;
        // "1" is followed by 2 once, then by 9 once: 9 is the latest.
        let prompt = [1, 2, 5, 1, 9, 6, 1];
        s.begin(&prompt);
        assert_eq!(s.propose(&prompt, 1).tokens, vec![9]);
        // Another "1 2" makes 2 the more frequent.
        s.accept(&[2, 7, 1]);
        assert_eq!(s.propose(&[1, 2, 5, 1, 9, 6, 1, 2, 7, 1], 1).tokens, vec![2]);
    }

    #[test]
    fn low_probability_branches_stop_the_draft() {
        let mut s = SuffixDrafter::new(8);
        s.min_prob = 0.6;
        let prompt = [7, 1, 7, 2, 7, 3, 7];
        s.begin(&prompt);
        assert!(s.propose(&prompt, 4).is_empty());
    }

    #[test]
    fn history_of_earlier_requests_is_used() {
        let mut s = SuffixDrafter::new(8);
        s.begin(&[9, 9]);
        s.accept(&[5, 6, 7, 8]);
        s.end();
        s.begin(&[1, 5, 6]);
        assert_eq!(s.propose(&[1, 5, 6], 2).tokens, vec![7, 8]);
    }

    #[test]
    fn depth_bounds_memory() {
        let mut s = SuffixDrafter::new(4);
        let p: Vec<u32> = (0..1000).collect();
        s.begin(&p);
        // Each distinct token starts at most 4 nodes deep.
        assert!(s.request.nodes.len() <= 1 + 4 * 1000);
    }
}
