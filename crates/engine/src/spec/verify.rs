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
    verify_lazy(draft, q, |i| p[i].clone(), rng)
}

/// `verify` with p_i computed on demand by `p(i)`, called once per position
/// in order and never past the first rejection: a pass's later rows cost
/// nothing to verify (their argmax over the vocabulary, or their sort when
/// sampling) once an earlier token is rejected. The same verdict as `verify`
/// on the same distributions.
pub fn verify_lazy(draft: &[u32], q: &[Dist], mut p: impl FnMut(usize) -> Dist, rng: &mut Rng) -> Verdict {
    if q.is_empty() {
        for (i, &x) in draft.iter().enumerate() {
            let t = sample(&p(i), rng);
            if t != x {
                return Verdict { accepted: i, bonus: t };
            }
        }
        let bonus = sample(&p(draft.len()), rng);
        return Verdict { accepted: draft.len(), bonus };
    }
    assert_eq!(q.len(), draft.len(), "one q per draft token");
    for (i, &x) in draft.iter().enumerate() {
        let pi = p(i);
        let (px, qx) = (prob_of(&pi, x), prob_of(&q[i], x));
        let u = rng.uniform() as f32;
        if qx > 0.0 && u * qx < px {
            continue; // accepted with probability min(1, px / qx)
        }
        // Residual max(0, p - q), renormalised by `draw`'s cumulative walk.
        let mut res: Dist =
            pi.iter().map(|&(t, pt)| (t, (pt - prob_of(&q[i], t)).max(0.0))).filter(|c| c.1 > 0.0).collect();
        let total: f32 = res.iter().map(|c| c.1).sum();
        let bonus = if total > 0.0 {
            res.iter_mut().for_each(|c| c.1 /= total);
            draw(&res, rng)
        } else {
            // p == q exactly: any draw from p is correct.
            sample(&pi, rng)
        };
        return Verdict { accepted: i, bonus };
    }
    Verdict { accepted: draft.len(), bonus: sample(&p(draft.len()), rng) }
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

    #[test]
    fn lazy_verification_stops_at_the_first_rejection_with_the_same_verdict() {
        let p = vec![point(5), point(6), point(9), point(1)];
        for draft in [[5, 6, 7], [5, 6, 9], [4, 6, 9]] {
            let mut asked = Vec::new();
            let lazy = verify_lazy(
                &draft,
                &[],
                |i| {
                    asked.push(i);
                    p[i].clone()
                },
                &mut Rng::new(1),
            );
            assert_eq!(lazy, verify(&draft, &[], &p, &mut Rng::new(1)));
            // Rows up to the rejected one (or the bonus row), in order, once each.
            assert_eq!(asked, (0..=lazy.accepted).collect::<Vec<_>>(), "{draft:?}");
        }
        // Sampled drafts: the same verdict and rng stream as `verify`.
        let mut g = Rng::new(3);
        let p: Vec<Dist> = (0..4).map(|_| random_dist(6, &mut g, None)).collect();
        let q: Vec<Dist> = (0..3).map(|_| random_dist(6, &mut g, None)).collect();
        for seed in 0..50 {
            let draft = [seed as u32 % 6, (seed as u32 / 6) % 6, 2];
            let (mut r1, mut r2) = (Rng::new(seed), Rng::new(seed));
            let mut asked = 0;
            let lazy = verify_lazy(
                &draft,
                &q,
                |i| {
                    asked += 1;
                    p[i].clone()
                },
                &mut r1,
            );
            assert_eq!(lazy, verify(&draft, &q, &p, &mut r2));
            assert_eq!(asked, lazy.accepted + 1);
            assert_eq!(r1.uniform(), r2.uniform());
        }
    }

    /// Upper critical value of chi-square with `df` degrees of freedom at the
    /// one-sided normal quantile `z` (Wilson-Hilferty approximation).
    fn chi2_critical(df: usize, z: f64) -> f64 {
        let d = df as f64;
        let t = 1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt();
        d * t * t * t
    }

    /// A random distribution over 0..v; `zero` gets probability 0.
    fn random_dist(v: usize, rng: &mut Rng, zero: Option<u32>) -> Dist {
        let mut w: Vec<f64> = (0..v).map(|_| rng.uniform() + 0.05).collect();
        if let Some(z) = zero {
            w[z as usize] = 0.0;
        }
        let sum: f64 = w.iter().sum();
        w.iter().enumerate().filter(|(_, &x)| x > 0.0).map(|(t, &x)| (t as u32, (x / sum) as f32)).collect()
    }

    /// Per output position, the counts of emitted tokens over `n` verify steps
    /// of k-token drafts sampled from q (positions independent).
    fn emitted_counts(p: &[Dist], q: &[Dist], v: usize, n: usize, seed: u64, broken: bool) -> Vec<Vec<usize>> {
        let k = q.len();
        let mut rng = Rng::new(seed);
        let mut counts = vec![vec![0usize; v]; k + 1];
        for _ in 0..n {
            let draft: Vec<u32> = q.iter().map(|qi| draw(qi, &mut rng)).collect();
            let verdict = if broken {
                Verdict { accepted: k, bonus: draw(&p[k], &mut rng) }
            } else {
                verify(&draft, q, p, &mut rng)
            };
            for (j, &t) in draft[..verdict.accepted].iter().chain(std::iter::once(&verdict.bonus)).enumerate() {
                counts[j][t as usize] += 1;
            }
        }
        counts
    }

    /// Whether counts fit p: total variation within the bound of the
    /// reliability plan (L09) and chi-square below its 1e-6 critical value.
    fn fits(counts: &[usize], p: &Dist) -> (bool, f64, f64) {
        let n: usize = counts.iter().sum();
        let v = counts.len();
        let mut probs = vec![0f64; v];
        for &(t, pr) in p {
            probs[t as usize] = pr as f64;
        }
        if counts.iter().zip(&probs).any(|(&c, &pr)| c > 0 && pr == 0.0) {
            return (false, 1.0, f64::INFINITY);
        }
        let tv = counts.iter().zip(&probs).map(|(&c, &pr)| (c as f64 / n as f64 - pr).abs()).sum::<f64>() / 2.0;
        let chi: f64 = counts
            .iter()
            .zip(&probs)
            .filter(|(_, &pr)| pr > 0.0)
            .map(|(&c, &pr)| (c as f64 - pr * n as f64).powi(2) / (pr * n as f64))
            .sum();
        let df = probs.iter().filter(|&&pr| pr > 0.0).count().saturating_sub(1).max(1);
        let tv_bound = (2.0 * (v as f64 * 2f64.ln() + 1e6f64.ln()) / n as f64).sqrt() / 2.0;
        (tv <= tv_bound && chi < chi2_critical(df, 4.753), tv, chi)
    }

    /// L09: for V in {10, 16, 32} and k in {1, 3, 5}, with a random draft, a
    /// draft with zero mass on the target's mode, and draft == target, every
    /// emitted position follows the target distribution (2e5 steps each).
    #[test]
    fn rejection_sampling_matches_the_target_at_every_position() {
        let mut setup = Rng::new(2024);
        for v in [10usize, 16, 32] {
            for k in [1usize, 3, 5] {
                let p: Vec<Dist> = (0..=k).map(|_| random_dist(v, &mut setup, None)).collect();
                let mode = |d: &Dist| d.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
                let drafts: Vec<(&str, Vec<Dist>)> = vec![
                    ("random", (0..k).map(|_| random_dist(v, &mut setup, None)).collect()),
                    ("no mass on the mode", (0..k).map(|i| random_dist(v, &mut setup, Some(mode(&p[i])))).collect()),
                    ("q == p", p[..k].to_vec()),
                ];
                for (name, q) in &drafts {
                    let counts = emitted_counts(&p, q, v, 200_000, (v * 10 + k) as u64, false);
                    for (j, c) in counts.iter().enumerate() {
                        let (ok, tv, chi) = fits(c, &p[j]);
                        assert!(ok, "V={v} k={k} draft {name}: position {j} off (TV {tv:.4}, chi2 {chi:.1})");
                    }
                }
                // Negative control: accepting every draft token emits q, not p.
                let counts = emitted_counts(&p, &drafts[0].1, v, 200_000, 7, true);
                assert!(!fits(&counts[0], &p[0]).0, "V={v} k={k}: the test cannot tell a broken verifier");
            }
        }
    }
}
