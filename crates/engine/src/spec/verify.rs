//! The verifier: a pure function of (draft, q, target probabilities p, rng).
//!
//! - Deterministic drafts (greedy, or any drafter without q): at each position
//!   draw the target's token from p_i exactly as plain decoding would (one
//!   draw per emitted token, same rng stream); accept while it equals the
//!   draft token. The first mismatch, or the position after the whole draft,
//!   gives the bonus token. With the same seed the output equals plain
//!   sampled decoding token for token; greedy draws are argmaxes.
//! - Sampled drafts (q given): rejection sampling (Leviathan et al. 2023,
//!   Chen et al. 2023): accept x_i with probability min(1, p(x_i)/q(x_i));
//!   on rejection draw from the residual max(0, p - q) normalised; after a
//!   fully accepted draft draw the bonus from p_{k+1}. The emitted tokens are
//!   distributed exactly as the target's.

use crate::rng::Rng;
use crate::sampler::draw;

/// A probability distribution as (token, probability) pairs summing to 1.
pub type Dist = Vec<(u32, f32)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// How many draft tokens were accepted.
    pub accepted: usize,
    /// The target's token after the accepted prefix.
    pub bonus: u32,
}

fn prob_of(d: &[(u32, f32)], t: u32) -> f32 {
    d.iter().find(|c| c.0 == t).map(|c| c.1).unwrap_or(0.0)
}

/// `p` has one distribution per draft position plus one (k + 1 in all).
/// `q` is empty for deterministic drafts, else one per draft token.
/// A draft token outside every distribution (e.g. out of vocabulary) simply
/// has probability 0: it is rejected, never a panic.
pub fn verify(draft: &[u32], q: &[Dist], p: &[Dist], rng: &mut Rng) -> Verdict {
    assert_eq!(p.len(), draft.len() + 1, "need k + 1 target distributions");
    if q.is_empty() {
        for (i, &x) in draft.iter().enumerate() {
            let t = sample(&p[i], rng);
            if t != x {
                return Verdict { accepted: i, bonus: t };
            }
        }
        let bonus = sample(&p[draft.len()], rng);
        return Verdict { accepted: draft.len(), bonus };
    }
    assert_eq!(q.len(), draft.len(), "one q per draft token");
    for (i, &x) in draft.iter().enumerate() {
        let (px, qx) = (prob_of(&p[i], x), prob_of(&q[i], x));
        let u = rng.uniform() as f32;
        if qx > 0.0 && u * qx < px {
            continue; // accepted with probability min(1, px / qx)
        }
        // Residual max(0, p - q), renormalised by `draw`'s cumulative walk.
        let mut res: Dist =
            p[i].iter().map(|&(t, pt)| (t, (pt - prob_of(&q[i], t)).max(0.0))).filter(|c| c.1 > 0.0).collect();
        let total: f32 = res.iter().map(|c| c.1).sum();
        let bonus = if total > 0.0 {
            res.iter_mut().for_each(|c| c.1 /= total);
            draw(&res, rng)
        } else {
            // p == q exactly: any draw from p is correct.
            sample(&p[i], rng)
        };
        return Verdict { accepted: i, bonus };
    }
    Verdict { accepted: draft.len(), bonus: sample(&p[draft.len()], rng) }
}

/// One draw from a distribution; a point mass consumes no randomness (greedy).
fn sample(d: &[(u32, f32)], rng: &mut Rng) -> u32 {
    if d.len() == 1 {
        d[0].0
    } else {
        draw(d, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: u32) -> Dist {
        vec![(t, 1.0)]
    }

    #[test]
    fn greedy_accepts_the_matching_prefix_plus_bonus() {
        let p = vec![point(5), point(6), point(9), point(1)];
        let mut rng = Rng::new(0);
        assert_eq!(verify(&[5, 6, 7], &[], &p, &mut rng), Verdict { accepted: 2, bonus: 9 });
        assert_eq!(verify(&[5, 6, 9], &[], &p, &mut rng), Verdict { accepted: 3, bonus: 1 });
        assert_eq!(verify(&[4, 6, 9], &[], &p, &mut rng), Verdict { accepted: 0, bonus: 5 });
        // Out-of-vocabulary draft ids are rejections.
        assert_eq!(verify(&[u32::MAX], &[], &p[..2], &mut rng), Verdict { accepted: 0, bonus: 5 });
    }

    /// Chi-square statistic of observed counts against expected probabilities.
    fn chi2(counts: &[usize], probs: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// Emitted first tokens of rejection sampling with a sampled draft follow p.
    fn first_token_counts(p: &Dist, q: &Dist, n: usize, seed: u64, broken: bool) -> Vec<usize> {
        let mut rng = Rng::new(seed);
        let mut counts = vec![0usize; 4];
        for _ in 0..n {
            let x = draw(q, &mut rng);
            let v = if broken {
                // Negative control: accept every draft token (ignores p).
                Verdict { accepted: 1, bonus: 0 }
            } else {
                verify(&[x], std::slice::from_ref(q), &[p.clone(), point(0)], &mut rng)
            };
            let first = if v.accepted == 1 { x } else { v.bonus };
            counts[first as usize] += 1;
        }
        counts
    }

    #[test]
    fn rejection_sampling_reproduces_the_target_distribution() {
        let p: Dist = vec![(0, 0.5), (1, 0.3), (2, 0.15), (3, 0.05)];
        let q: Dist = vec![(0, 0.1), (1, 0.2), (2, 0.3), (3, 0.4)];
        let probs: Vec<f64> = p.iter().map(|c| c.1 as f64).collect();
        // 3 degrees of freedom: chi2 > 16.27 has probability 0.001 under H0.
        let good = chi2(&first_token_counts(&p, &q, 200_000, 1, false), &probs);
        assert!(good < 16.27, "chi2 {good}: rejection sampling is biased");
        // Negative control: the same test fails for a verifier that accepts q's samples.
        let bad = chi2(&first_token_counts(&p, &q, 200_000, 1, true), &probs);
        assert!(bad > 16.27, "chi2 {bad}: the test cannot tell a broken verifier");
    }
}
