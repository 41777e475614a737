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
//! source keeps its own a_j and draft cost, so a weak source never shortens
//! a strong one's drafts. k = 0 (plain decoding) wins when speculation does not
//! pay; then a short draft is still tried now and then (at exponentially
//! growing intervals) so the estimates can recover when drafting starts to pay.

use super::Draft;

#[derive(Clone, Debug)]
pub struct Controller {
    pub max_k: usize,
    /// Fixed k (no adaptation) when set.
    pub fixed_k: Option<usize>,
    /// Draft tokens with confidence below this are dropped.
    pub min_confidence: f32,
    pub probe_every: usize,
    /// Per draft source (`Draft::source`): acceptance EMA per position.
    accept: Vec<Vec<f64>>,
    /// EMA of seconds for a target pass of n rows, index n (0 unused).
    pass_secs: Vec<Option<f64>>,
    /// Per draft source: EMA of drafting seconds per token.
    draft_secs_per_token: Vec<f64>,
    skipped: usize,
    probing: bool,
}

const ALPHA: f64 = 0.15;
const PROBE_EVERY: usize = 8;
const MAX_PROBE_EVERY: usize = 256;
/// Prior relative cost of each extra verified row when nothing is measured.
const PRIOR_ROW_COST: f64 = 0.08;
/// Prior acceptance per position of a source not yet observed.
const PRIOR_ACCEPT: f64 = 0.6;

impl Controller {
    pub fn new(max_k: usize) -> Controller {
        Controller {
            max_k,
            fixed_k: None,
            min_confidence: 0.0,
            probe_every: PROBE_EVERY,
            accept: vec![vec![PRIOR_ACCEPT; max_k + 1]],
            pass_secs: vec![None; max_k + 2],
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

    /// Seconds of a target pass over `n` rows (measured, or estimated from
    /// the nearest measurement with the prior slope).
    pub fn pass_cost(&self, n: usize) -> f64 {
        if let Some(Some(s)) = self.pass_secs.get(n) {
            return *s;
        }
        let (m, s) = self
            .pass_secs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .min_by_key(|(i, _)| i.abs_diff(n))
            .unwrap_or((1, 1.0));
        s * (1.0 + PRIOR_ROW_COST * n as f64) / (1.0 + PRIOR_ROW_COST * m as f64)
    }

    fn expected_tokens(&self, source: usize, k: usize) -> f64 {
        let accept = &self.accept[source.min(self.accept.len() - 1)];
        let mut e = 1.0;
        let mut run = 1.0;
        for j in 1..=k {
            run *= accept[j.min(self.max_k)];
            e += run;
        }
        e
    }

    /// Tokens per second of verifying a k-token draft from `source`.
    pub fn rate(&self, source: usize, k: usize) -> f64 {
        let per_token = self.draft_secs_per_token[source.min(self.draft_secs_per_token.len() - 1)];
        self.expected_tokens(source, k) / (self.pass_cost(k + 1) + k as f64 * per_token)
    }

    /// Makes room for the statistics of `source`.
    fn ensure_source(&mut self, source: usize) {
        while self.accept.len() <= source {
            self.accept.push(vec![PRIOR_ACCEPT; self.max_k + 1]);
            self.draft_secs_per_token.push(0.0);
        }
    }

    /// How many tokens to ask the drafter for, decided before drafting so
    /// that an expensive drafter (a draft model) is not run when its tokens
    /// would not pay. When plain decoding wins, a short probe draft is asked
    /// for every `probe_every` steps, an interval that doubles while probes fail.
    pub fn draft_budget(&mut self) -> usize {
        if let Some(k) = self.fixed_k {
            return k;
        }
        self.probing = false;
        // The budget is asked for before the drafter picks its source: the
        // best any source could use.
        let best = (0..self.accept.len()).map(|s| self.best_k(s, self.max_k)).max().unwrap_or(0);
        if best > 0 {
            self.probe_every = PROBE_EVERY;
            return best;
        }
        self.skipped += 1;
        if self.skipped >= self.probe_every {
            // Probe with a short draft, and back off exponentially while
            // probes keep showing that drafting does not pay.
            self.skipped = 0;
            self.probing = true;
            self.probe_every = (self.probe_every * 2).min(MAX_PROBE_EVERY);
            return (self.max_k / 4).max(1);
        }
        0
    }

    fn best_k(&self, source: usize, avail: usize) -> usize {
        (0..=avail).max_by(|&a, &b| self.rate(source, a).total_cmp(&self.rate(source, b))).unwrap_or(0)
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
        self.best_k(draft.source, avail)
    }

    /// Records a verify step: `k` tokens drafted by `source`, `accepted` of
    /// them accepted, the target pass over k+1 rows took `secs`.
    pub fn observe(&mut self, source: usize, k: usize, accepted: usize, secs: f64) {
        let n = k + 1;
        if n < self.pass_secs.len() {
            let e = &mut self.pass_secs[n];
            *e = Some(e.map_or(secs, |v| v + ALPHA * (secs - v)));
        }
        self.ensure_source(source);
        let last = k.min(accepted + 1).min(self.max_k);
        for (j, a) in self.accept[source].iter_mut().enumerate().take(last + 1).skip(1) {
            let hit = if j <= accepted { 1.0 } else { 0.0 };
            *a += ALPHA * (hit - *a);
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
            c.observe(0, 8, 8, 0.010 + 0.0005 * 8.0);
            c.observe(1, 2, 0, 0.010 + 0.0005 * 2.0);
            c.observe(0, 0, 0, 0.010);
        }
        assert_eq!(c.draft_budget(), 8);
        assert_eq!(c.choose(&draft(0, &[1.0; 8])), 8);
        assert_eq!(c.choose(&draft(1, &[1.0; 8])), 0);
    }

    #[test]
    fn backs_off_when_nothing_is_accepted_and_probes_again() {
        let mut c = Controller::new(8);
        for _ in 0..50 {
            c.observe(0, 1, 0, 0.010);
            c.observe(0, 0, 0, 0.009);
        }
        let conf = [1.0; 8];
        let choices: Vec<usize> = (0..16)
            .map(|_| {
                let b = c.draft_budget();
                c.choose(&draft(0, &conf[..b]))
            })
            .collect();
        assert!(choices.iter().filter(|&&k| k == 0).count() >= 14, "{choices:?}");
        assert!(choices.contains(&2), "a short probe should happen: {choices:?}");
    }

    #[test]
    fn a_new_request_starts_probing_again() {
        let mut c = Controller::new(8);
        for _ in 0..40 {
            c.observe(0, 2, 0, 0.012);
            c.observe(0, 0, 0, 0.010);
        }
        // Probes keep failing until the interval is long.
        let mut steps = 0;
        loop {
            steps += 1;
            if c.draft_budget() > 0 && steps > 300 {
                break;
            }
            assert!(steps < 10_000, "no probe at all");
        }
        // Just probed, with the interval now at least 128 steps.
        assert!((0..64).all(|_| c.draft_budget() == 0));
        c.begin_request();
        assert!((0..PROBE_EVERY).any(|_| c.draft_budget() > 0), "no probe in the new request");
    }

    #[test]
    fn drafts_long_when_everything_is_accepted_and_verify_is_cheap() {
        let mut c = Controller::new(8);
        for k in 0..=8 {
            for _ in 0..20 {
                c.observe(0, k, k, 0.010 + 0.0005 * k as f64);
            }
        }
        assert_eq!(c.draft_budget(), 8);
        assert_eq!(c.choose(&draft(0, &[1.0; 8])), 8);
        // Fixed k ignores the estimates.
        let mut f = Controller::fixed(3);
        assert_eq!(f.choose(&draft(0, &[1.0; 8])), 3);
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
                c.observe(0, k, k, 0.015 + 0.0015 * k as f64);
            }
        }
        let budgets: Vec<usize> = (0..16).map(|_| c.draft_budget()).collect();
        assert!(budgets.iter().filter(|&&b| b == 0).count() >= 14, "{budgets:?}");
    }
}
