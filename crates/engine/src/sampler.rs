//! Logits -> probabilities -> token.
//!
//! `probs` is the one function that turns logits into the distribution a
//! token is drawn from; everything that needs p (plain sampling, and the
//! verifier's p and q later) goes through it, so the same warp gives the same
//! distribution everywhere. Order: repetition penalty, temperature, softmax,
//! top-k, top-p, min-p, renormalise.

use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Whether each row's argmax is all that sampling reads (greedy, no
    /// repetition penalty): then a pass may return ids instead of logits
    /// (`Model::forward_argmax`).
    pub fn argmax_suffices(&self) -> bool {
        self.is_greedy() && !self.penalizes()
    }

    fn penalizes(&self) -> bool {
        self.repeat_penalty != 1.0 && self.repeat_last_n > 0
    }
}

/// Index of the largest logit; ties go to the lowest id.
pub fn argmax(logits: &[f32]) -> u32 {
    specdec_kernels::ops::argmax(logits) as u32
}

/// Applies the repetition penalty (llama.cpp's rule: divide positive logits,
/// multiply negative ones) for tokens in the recent history.
fn penalize(logits: &mut [f32], p: &SamplingParams, history: &[u32]) {
    if p.repeat_penalty == 1.0 || p.repeat_last_n == 0 {
        return;
    }
    let start = history.len().saturating_sub(p.repeat_last_n);
    let mut seen = std::collections::HashSet::new();
    for &t in &history[start..] {
        if let Some(l) = logits.get_mut(t as usize) {
            if seen.insert(t) {
                *l = if *l > 0.0 { *l / p.repeat_penalty } else { *l * p.repeat_penalty };
            }
        }
    }
}

/// The sampling distribution as (token, probability) pairs, most likely first,
/// probabilities summing to 1. Greedy gives the argmax with probability 1.
pub fn probs(logits: &[f32], p: &SamplingParams, history: &[u32]) -> Vec<(u32, f32)> {
    // Copy the logits only when a penalty changes them (they are 1 MB for a
    // 262k vocabulary, and the verifier asks for k + 1 rows per step).
    let penalized;
    let l: &[f32] = if p.penalizes() {
        let mut v = logits.to_vec();
        penalize(&mut v, p, history);
        penalized = v;
        &penalized
    } else {
        logits
    };
    if p.is_greedy() {
        return vec![(argmax(l), 1.0)];
    }
    let inv_t = 1.0 / p.temperature;
    let max = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut cand: Vec<(u32, f32)> =
        l.iter().enumerate().map(|(i, &v)| (i as u32, ((v - max) * inv_t).exp())).filter(|&(_, e)| e > 0.0).collect();
    // Most likely first, ties by id, so the order (and the draw) is deterministic.
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 && cand.len() > p.top_k {
        cand.truncate(p.top_k);
    }
    let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
    if p.top_p < 1.0 {
        let mut acc = 0f64;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1 as f64 / total;
            if acc >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let floor = cand[0].1 * p.min_p;
        let keep = cand.iter().take_while(|c| c.1 >= floor).count();
        cand.truncate(keep.max(1));
    }
    let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
    for c in cand.iter_mut() {
        c.1 = (c.1 as f64 / total) as f32;
    }
    cand
}

/// Draws from a distribution returned by `probs`.
pub fn draw(dist: &[(u32, f32)], rng: &mut Rng) -> u32 {
    let u = rng.uniform();
    let mut acc = 0f64;
    for &(t, pr) in dist {
        acc += pr as f64;
        if u < acc {
            return t;
        }
    }
    dist.last().map(|c| c.0).unwrap_or(0)
}

/// Picks the next token. Greedy consumes no randomness.
pub fn sample(logits: &[f32], p: &SamplingParams, history: &[u32], rng: &mut Rng) -> u32 {
    let dist = probs(logits, p, history);
    if dist.len() == 1 {
        return dist[0].0;
    }
    draw(&dist, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let l = [0.5, 2.0, 2.0, -1.0];
        assert_eq!(sample(&l, &SamplingParams::default(), &[], &mut Rng::new(1)), 1);
    }

    #[test]
    fn filters_keep_what_they_should() {
        let l: Vec<f32> = [4.0f32, 3.0, 2.0, 1.0, 0.0].to_vec();
        let base = SamplingParams { temperature: 1.0, ..Default::default() };
        assert_eq!(probs(&l, &base, &[]).len(), 5);
        let k2 = SamplingParams { top_k: 2, ..base.clone() };
        let d = probs(&l, &k2, &[]);
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((d[0].1 + d[1].1 - 1.0).abs() < 1e-6);
        // softmax(4,3,2,1,0): p0 ~ 0.636, p0+p1 ~ 0.87
        let tp = SamplingParams { top_p: 0.8, ..base.clone() };
        assert_eq!(probs(&l, &tp, &[]).len(), 2);
        let mp = SamplingParams { min_p: 0.3, ..base.clone() };
        // keeps p >= 0.3 * p0: e^-1 = 0.37 yes, e^-2 = 0.135 no
        assert_eq!(probs(&l, &mp, &[]).len(), 2);
        let pen = SamplingParams { repeat_penalty: 100.0, temperature: 0.0, ..base };
        assert_eq!(sample(&l, &pen, &[0], &mut Rng::new(0)), 1);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let l = [1.0f32, 0.0, 2.0];
        let p = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
        let dist = probs(&l, &p, &[]);
        let mut rng = Rng::new(p.seed);
        let n = 100_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[sample(&l, &p, &[], &mut rng) as usize] += 1;
        }
        for &(t, pr) in &dist {
            let f = counts[t as usize] as f64 / n as f64;
            // 5 standard deviations.
            let sd = (pr as f64 * (1.0 - pr as f64) / n as f64).sqrt();
            assert!((f - pr as f64).abs() < 5.0 * sd, "token {t}: {f} vs {pr}");
        }
    }
}
