//! Adaptive draft length.
//!
//! Picks k to maximise expected emitted tokens per second:
//!
//!   E(k) = 1 + sum_{i=1..k} prod_{j<=i} a_j      (tokens per verify step)
//!   T(k) = target pass over k+1 rows + k * draft cost per token
//!
//! where a_j is the observed probability that position j is accepted given
//! j-1 was (an exponential moving average), and T is learned online from the
//! measured pass times. A drafter that combines several sources (`auto`: a
//! suffix match or an MTP head) tags each draft with its source, and each
//! source keeps its own draft cost and, per evidence class (`Draft::class`:
//! how long the match was, how confident the head), its own a_j: a weak source
//! never shortens a strong one's drafts, and a 20-token match in a repetition
//! loop drafts long while a 1-token match in the same request drafts short.
//! When all k draft tokens are accepted and the drafter had proposed more, the
//! bonus token says whether token k+1 would have been: position k+1 is
//! observed too, so a short k can grow (otherwise positions past k would never
//! be seen again). k = 0 (plain decoding) wins when speculation does not
//! pay; then a short draft is still tried now and then (at exponentially
//! growing intervals) so the estimates can recover when drafting starts to pay.

use super::{Draft, EVIDENCE_CLASSES};

#[derive(Clone, Debug)]
pub struct Controller {
    pub max_k: usize,
    /// Fixed k (no adaptation) when set.
    pub fixed_k: Option<usize>,
    /// Draft tokens with confidence below this are dropped.
    pub min_confidence: f32,
    pub probe_every: usize,
    /// Per draft source and class (`key`): acceptance EMA per position.
    accept: Vec<Vec<f64>>,
    /// Per key: whether any step has been observed (unseen keys hold the prior).
    seen: Vec<bool>,
    /// Seconds of a one-row target pass (the level, which moves with the
    /// context length and the machine), once a pass has been measured.
    pass_level: Option<f64>,
    /// Cost of an n-row pass relative to one row, index n (0 and 1 unused).
    pass_shape: Vec<f64>,
    /// Per draft source: EMA of drafting seconds per token.
    draft_secs_per_token: Vec<f64>,
    skipped: usize,
    probing: bool,
}

/// Draft tokens to ask for: at most `max`, and per source of a combined
/// drafter (`Draft::source`) what that source's statistics say it can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub max: usize,
    /// Indexed by source; sources not listed (not yet measured) get `max`.
    pub per_source: Vec<usize>,
}

impl Budget {
    /// The same `k` for every source.
    pub fn uniform(k: usize) -> Budget {
        Budget { max: k, per_source: Vec::new() }
    }

    /// The budget of `source`, never above `max`.
    pub fn of(&self, source: usize) -> usize {
        self.per_source.get(source).copied().unwrap_or(self.max).min(self.max)
    }

    /// Caps every source at `cap` (the token budget left, the cache's room).
    pub fn capped(mut self, cap: usize) -> Budget {
        self.max = self.max.min(cap);
        self
    }
}

const ALPHA: f64 = 0.15;
const PROBE_EVERY: usize = 8;
const MAX_PROBE_EVERY: usize = 256;
/// Prior relative cost of each extra verified row when nothing is measured.
const PRIOR_ROW_COST: f64 = 0.08;
/// Prior acceptance per position of a source not yet observed.
const PRIOR_ACCEPT: f64 = 0.6;
/// A drafter is free when a draft token costs at most this share of a
/// one-row target pass.
const FREE_DRAFT: f64 = 0.01;

impl Controller {
    pub fn new(max_k: usize) -> Controller {
        Controller {
            max_k,
            fixed_k: None,
            min_confidence: 0.0,
            probe_every: PROBE_EVERY,
            accept: vec![vec![PRIOR_ACCEPT; max_k + 2]; EVIDENCE_CLASSES],
            seen: vec![false; EVIDENCE_CLASSES],
            pass_level: None,
            pass_shape: (0..max_k + 2).map(|n| 1.0 + PRIOR_ROW_COST * n.saturating_sub(1) as f64).collect(),
            draft_secs_per_token: vec![0.0],
            skipped: 0,
            probing: false,
        }
    }

    pub fn fixed(k: usize) -> Controller {
        let mut c = Controller::new(k);
        c.fixed_k = Some(k);
        c
    }

    /// Starts a new request: pass times and acceptance carry over (the
    /// machine's and the drafter's on this model; pulling acceptance back to
    /// the prior measured worse, as a weak source then drafts long again at
    /// every request), but probing backs off from scratch, so one
    /// unpredictable request cannot switch drafting off for the next.
    pub fn begin_request(&mut self) {
        self.probe_every = PROBE_EVERY;
        self.skipped = 0;
    }

    /// Seconds of a target pass over `n` rows: the level times the shape.
    /// Each measured pass moves both (in log space), so a measurement that
    /// was an outlier (the first pass of a request: cold caches, fresh logit
    /// buffers) fades instead of standing for its row count until that count
    /// happens to be chosen again, and row counts not chosen for a while
    /// follow the level as the context grows. More rows never cost less: the
    /// shape is read as its running maximum.
    pub fn pass_cost(&self, n: usize) -> f64 {
        let known = self.pass_shape.iter().take(n + 1).skip(2).fold(1f64, |a, &r| a.max(r));
        let shape = if n < self.pass_shape.len() { known } else { known.max(1.0 + PRIOR_ROW_COST * (n - 1) as f64) };
        self.pass_level.unwrap_or(1.0) * shape
    }

    fn expected_tokens(&self, key: usize, k: usize) -> f64 {
        let accept = &self.accept[key.min(self.accept.len() - 1)];
        let mut e = 1.0;
        let mut run = 1.0;
        for j in 1..=k {
            run *= accept[j.min(self.max_k)];
            e += run;
        }
        e
    }

    /// Tokens per second of verifying a k-token draft of statistics `key`.
    fn rate(&self, key: usize, k: usize) -> f64 {
        let source = key / EVIDENCE_CLASSES;
        let per_token = self.draft_secs_per_token[source.min(self.draft_secs_per_token.len() - 1)];
        self.expected_tokens(key, k) / (self.pass_cost(k + 1) + k as f64 * per_token)
    }

    /// Makes room for the statistics of `source`.
    fn ensure_source(&mut self, source: usize) {
        while self.draft_secs_per_token.len() <= source {
            self.draft_secs_per_token.push(0.0);
        }
        while self.accept.len() < (source + 1) * EVIDENCE_CLASSES {
            self.accept.push(vec![PRIOR_ACCEPT; self.max_k + 2]);
            self.seen.push(false);
        }
    }

    /// How many tokens to ask the drafter for, per source, decided before
    /// drafting so that an expensive source (a draft model, an MTP head) is
    /// not run when its tokens would not pay. A source whose tokens cost next
    /// to nothing (n-gram, suffix) is always asked for `max_k`: `choose` trims
    /// per evidence class, and a draft verified with k = 0 still shows through
    /// the bonus whether its first token was right. A costly source gets the
    /// best k of its own statistics: a combined drafter's free part is never
    /// held back to what its costly part can use (that shortened `auto`'s
    /// suffix drafts from 8.1 to 5.4 accepted tokens on rag). When no source
    /// pays, a short probe draft is asked for every `probe_every` steps, an
    /// interval that doubles while probes fail.
    pub fn draft_budget(&mut self) -> Budget {
        if let Some(k) = self.fixed_k {
            return Budget::uniform(k);
        }
        self.probing = false;
        let free = FREE_DRAFT * self.pass_cost(1);
        let per_source: Vec<usize> = (0..self.draft_secs_per_token.len())
            .map(|source| {
                if self.draft_secs_per_token[source] <= free {
                    return self.max_k;
                }
                // Before the drafter picks its evidence: the best any class
                // of this source could use, among those observed (or the prior).
                (0..EVIDENCE_CLASSES)
                    .filter(|&class| class == 0 || self.seen[key(source, class)])
                    .map(|class| self.best_k(key(source, class), self.max_k))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let max = per_source.iter().copied().max().unwrap_or(self.max_k);
        if max > 0 {
            self.probe_every = PROBE_EVERY;
            return Budget { max, per_source };
        }
        self.skipped += 1;
        if self.skipped >= self.probe_every {
            // Probe with a short draft, and back off exponentially while
            // probes keep showing that drafting does not pay.
            self.skipped = 0;
            self.probing = true;
            self.probe_every = (self.probe_every * 2).min(MAX_PROBE_EVERY);
            return Budget::uniform((self.max_k / 4).max(1));
        }
        Budget::uniform(0)
    }

    fn best_k(&self, key: usize, avail: usize) -> usize {
        (0..=avail).max_by(|&a, &b| self.rate(key, a).total_cmp(&self.rate(key, b))).unwrap_or(0)
    }

    /// Trims a proposed draft to the k to verify, from its source's
    /// statistics and its per-token confidences.
    pub fn choose(&mut self, draft: &Draft) -> usize {
        let confidence = &draft.confidence[..draft.confidence.len().min(draft.tokens.len())];
        let mut avail = draft.tokens.len().min(self.max_k);
        if let Some(k) = self.fixed_k {
            return avail.min(k);
        }
        if let Some(cut) = confidence.iter().position(|&c| c < self.min_confidence) {
            avail = avail.min(cut);
        }
        if self.probing {
            return avail;
        }
        self.ensure_source(draft.source);
        self.best_k(key(draft.source, draft.class), avail)
    }

    /// Records a verify step: `k` tokens drafted by `source` with evidence
    /// `class`, `accepted` of them accepted, the target pass over k+1 rows
    /// took `secs`. `next_hit`: when all k were accepted and the drafter had
    /// proposed a token k+1, whether the bonus token equals it (position k+1
    /// observed without verifying it).
    pub fn observe(
        &mut self,
        source: usize,
        class: usize,
        k: usize,
        accepted: usize,
        next_hit: Option<bool>,
        secs: f64,
    ) {
        let n = k + 1;
        if secs > 0.0 && secs.is_finite() {
            match self.pass_level {
                None => self.pass_level = Some(secs / self.pass_cost(n)),
                Some(level) => {
                    let err = (secs / self.pass_cost(n)).ln();
                    self.pass_level = Some(level * (ALPHA * err).exp());
                    if let Some(r) = self.pass_shape.get_mut(n).filter(|_| n > 1) {
                        *r *= (ALPHA * err).exp();
                    }
                }
            }
        }
        self.ensure_source(source);
        self.seen[key(source, class)] = true;
        let accept = &mut self.accept[key(source, class)];
        let mut update = |j: usize, hit: bool| {
            if (1..accept.len()).contains(&j) {
                accept[j] += ALPHA * (f64::from(u8::from(hit)) - accept[j]);
            }
        };
        for j in 1..=k.min(accepted + 1) {
            update(j, j <= accepted);
        }
        if let Some(hit) = next_hit.filter(|_| accepted == k) {
            update(k + 1, hit);
        }
    }

    /// Records the time `source` took to propose `tokens` tokens.
    pub fn observe_draft(&mut self, source: usize, tokens: usize, secs: f64) {
        if tokens > 0 {
            self.ensure_source(source);
            let per = secs / tokens as f64;
            let e = &mut self.draft_secs_per_token[source];
            *e += ALPHA * (per - *e);
        }
    }
}

/// Index of the statistics of a draft `source` with evidence `class`.
fn key(source: usize, class: usize) -> usize {
    source * EVIDENCE_CLASSES + class.min(EVIDENCE_CLASSES - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(source: usize, confidence: &[f32]) -> Draft {
        Draft {
            tokens: (0..confidence.len() as u32).collect(),
            confidence: confidence.to_vec(),
            source,
            ..Default::default()
        }
    }

    #[test]
    fn a_weak_source_does_not_shorten_a_strong_sources_drafts() {
        let mut c = Controller::new(8);
        for _ in 0..40 {
            // Source 0 (a suffix match) is always right, source 1 (a head) never.
            c.observe(0, 0, 8, 8, None, 0.010 + 0.0005 * 8.0);
            c.observe(1, 0, 2, 0, None, 0.010 + 0.0005 * 2.0);
            c.observe(0, 0, 0, 0, None, 0.010);
        }
        assert_eq!(c.draft_budget().max, 8);
        assert_eq!(c.choose(&draft(0, &[1.0; 8])), 8);
        assert_eq!(c.choose(&draft(1, &[1.0; 8])), 0);
    }

    #[test]
    fn a_costly_source_does_not_hold_back_a_free_ones_budget() {
        let mut c = Controller::new(8);
        c.observe_draft(0, 8, 0.000_001);
        // Source 1 (a head) costs a third of a pass per token and is never right.
        c.observe_draft(1, 1, 0.003);
        for _ in 0..40 {
            c.observe(0, 0, 0, 0, None, 0.010);
            c.observe(1, 0, 2, 0, None, 0.011);
        }
        let b = c.draft_budget();
        assert_eq!((b.max, b.of(0), b.of(1)), (8, 8, 0), "{b:?}");
        // A lone costly source that does not pay gets no draft at all.
        let mut lone = Controller::new(8);
        lone.observe_draft(0, 1, 0.003);
        for _ in 0..40 {
            lone.observe(0, 0, 2, 0, None, 0.011);
        }
        assert_eq!(lone.draft_budget().max, 0);
    }

    #[test]
    fn backs_off_when_nothing_is_accepted_and_probes_again() {
        let mut c = Controller::new(8);
        // A drafter whose tokens cost something (free ones are always asked).
        c.observe_draft(0, 1, 0.001);
        for _ in 0..50 {
            c.observe(0, 0, 1, 0, None, 0.010);
            c.observe(0, 0, 0, 0, None, 0.009);
        }
        let conf = [1.0; 8];
        let choices: Vec<usize> = (0..16)
            .map(|_| {
                let b = c.draft_budget().max;
                c.choose(&draft(0, &conf[..b]))
            })
            .collect();
        assert!(choices.iter().filter(|&&k| k == 0).count() >= 14, "{choices:?}");
        assert!(choices.contains(&2), "a short probe should happen: {choices:?}");
    }

    #[test]
    fn a_new_request_starts_probing_again() {
        let mut c = Controller::new(8);
        c.observe_draft(0, 1, 0.001);
        for _ in 0..40 {
            c.observe(0, 0, 2, 0, None, 0.012);
            c.observe(0, 0, 0, 0, None, 0.010);
        }
        // Probes keep failing until the interval is long.
        let mut steps = 0;
        loop {
            steps += 1;
            if c.draft_budget().max > 0 && steps > 300 {
                break;
            }
            assert!(steps < 10_000, "no probe at all");
        }
        // Just probed, with the interval now at least 128 steps.
        assert!((0..64).all(|_| c.draft_budget().max == 0));
        c.begin_request();
        assert!((0..PROBE_EVERY).any(|_| c.draft_budget().max > 0), "no probe in the new request");
    }

    #[test]
    fn drafts_long_when_everything_is_accepted_and_verify_is_cheap() {
        let mut c = Controller::new(8);
        for k in 0..=8 {
            for _ in 0..20 {
                c.observe(0, 0, k, k, None, 0.010 + 0.0005 * k as f64);
            }
        }
        assert_eq!(c.draft_budget().max, 8);
        assert_eq!(c.choose(&draft(0, &[1.0; 8])), 8);
        // Fixed k ignores the estimates.
        let mut f = Controller::fixed(3);
        assert_eq!(f.choose(&draft(0, &[1.0; 8])), 3);
    }

    fn classed(class: usize) -> Draft {
        Draft { class, ..draft(0, &[1.0; 8]) }
    }

    #[test]
    fn a_long_match_drafts_long_while_a_short_one_drafts_short() {
        let mut c = Controller::new(8);
        for _ in 0..40 {
            // Class 5 (long matches) always right, class 0 (one-token matches) never.
            c.observe(0, 5, 8, 8, None, 0.010 + 0.0005 * 8.0);
            c.observe(0, 0, 2, 0, None, 0.010 + 0.0005 * 2.0);
            c.observe(0, 0, 0, 0, None, 0.010);
        }
        assert_eq!(c.draft_budget().max, 8);
        assert_eq!(c.choose(&classed(5)), 8);
        assert_eq!(c.choose(&classed(0)), 0);
    }

    #[test]
    fn the_bonus_token_lets_a_short_k_grow() {
        let secs = |k: usize| 0.010 + 0.002 * k as f64;
        // Only the first 2 draft positions were accepted for a while: k = 2.
        let settled = || {
            let mut c = Controller::new(8);
            for _ in 0..30 {
                for k in 0..=8 {
                    c.observe(0, 3, k, k.min(2), None, secs(k));
                }
            }
            assert_eq!(c.choose(&classed(3)), 2);
            c
        };
        // Now the text repeats: every k-token draft is accepted and the
        // bonus equals the token the drafter proposed after it.
        let mut c = settled();
        let mut ks = Vec::new();
        for _ in 0..60 {
            let k = c.choose(&classed(3));
            ks.push(k);
            c.observe(0, 3, k, k, Some(true), secs(k));
        }
        assert_eq!(*ks.last().unwrap(), 8, "{ks:?}");
        // Without the bonus observation position 3 is never seen again.
        let mut d = settled();
        for _ in 0..60 {
            let k = d.choose(&classed(3));
            d.observe(0, 3, k, k, None, secs(k));
        }
        assert_eq!(d.choose(&classed(3)), 2);
    }

    #[test]
    fn a_free_drafter_is_always_asked_and_recovers_through_the_bonus() {
        let mut c = Controller::new(8);
        for _ in 0..40 {
            c.observe(0, 0, 1, 0, None, 0.010);
            c.observe(0, 0, 0, 0, None, 0.009);
        }
        // No drafting cost measured: asked for max_k, but nothing pays.
        assert_eq!(c.draft_budget().max, 8);
        assert_eq!(c.choose(&classed(0)), 0);
        // Verified with k = 0, yet the bonus shows the first token was right.
        for _ in 0..20 {
            c.observe(0, 0, 0, 0, Some(true), 0.009);
        }
        assert!(c.choose(&classed(0)) > 0);
    }
}

#[cfg(test)]
mod cost_tests {
    use super::*;

    #[test]
    fn an_expensive_drafter_is_not_run_when_it_cannot_pay() {
        // Every draft token is accepted, but drafting one costs a whole target pass.
        let mut c = Controller::new(8);
        for _ in 0..30 {
            c.observe_draft(0, 8, 8.0 * 0.015);
            for k in [0usize, 8] {
                c.observe(0, 0, k, k, None, 0.015 + 0.0015 * k as f64);
            }
        }
        let budgets: Vec<usize> = (0..16).map(|_| c.draft_budget().max).collect();
        assert!(budgets.iter().filter(|&&b| b == 0).count() >= 14, "{budgets:?}");
    }
}
