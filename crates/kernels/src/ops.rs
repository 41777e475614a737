//! Small f32 operations of a transformer block. Each works on one row at a
//! time, so results never depend on how many rows share a pass.

use std::sync::OnceLock;

use half::f16;

/// y = x / rms(x) * w, with the sum of squares in f64 (as ggml does).
pub fn rmsnorm(x: &mut [f32], w: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::matmul::isa() == crate::matmul::Isa::Avx512Vnni {
        // SAFETY: the ISA check covers AVX-512F.
        unsafe { crate::matmul::avx512::rmsnorm(x, w, eps) };
        return;
    }
    let total = sum_squares(x);
    let scale = 1.0 / ((total / x.len() as f64) as f32 + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

/// Lanes of the sum of squares: element i of each 32-wide chunk goes to
/// partial sum i, so that four 8-lane vector chains compute the same sums.
pub(crate) const SQ_LANES: usize = 32;

/// The sum of squares of `x` in f64, in a fixed order: 32 partial sums over
/// whole chunks, combined pairwise (lane i with i + 8, i + 16, i + 24, then
/// halves of the 8), then the tail in order. Squares of f32 values are exact
/// in f64, so a fused multiply-add gives the same sums. One sequential chain
/// (as before) made the norms latency-bound: 2 % of a prefill.
pub(crate) fn sum_squares(x: &[f32]) -> f64 {
    let mut ss = [0f64; SQ_LANES];
    let chunks = x.chunks_exact(SQ_LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..SQ_LANES {
            ss[i] += (c[i] as f64) * (c[i] as f64);
        }
    }
    let t: [f64; 8] = std::array::from_fn(|i| (ss[i] + ss[i + 8]) + (ss[i + 16] + ss[i + 24]));
    let u: [f64; 4] = std::array::from_fn(|i| t[i] + t[i + 4]);
    let mut total = (u[0] + u[2]) + (u[1] + u[3]);
    for &v in rest {
        total += (v as f64) * (v as f64);
    }
    total
}

/// `rmsnorm` applied to each `w.len()`-wide row of `x`.
pub fn rmsnorm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        rmsnorm(row, w, eps);
    }
}

/// GELU, tanh approximation, exactly.
#[inline]
pub fn gelu_exact(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

fn gelu_table() -> &'static [u16] {
    static T: OnceLock<Vec<u16>> = OnceLock::new();
    T.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_f32(gelu_exact(f16::from_bits(b).to_f32())).to_bits()).collect())
}

/// The GELU table as f32 values (for gathers).
pub fn gelu_table_f32() -> &'static [f32] {
    static T: OnceLock<Vec<f32>> = OnceLock::new();
    T.get_or_init(|| gelu_table().iter().map(|&b| f16::from_bits(b).to_f32()).collect())
}

/// g = gelu(g) * u over whole rows (the gated FFN activation).
pub fn gelu_mul(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::matmul::isa() == crate::matmul::Isa::Avx512Vnni {
        // SAFETY: the ISA check covers AVX-512F and F16C.
        unsafe { crate::matmul::avx512::gelu_mul(g, u, gelu_table_f32()) };
        return;
    }
    for (a, &b) in g.iter_mut().zip(u) {
        *a = gelu(*a) * b;
    }
}

/// f32 -> f16 bits, round to nearest even.
#[inline]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// GELU as ggml's CPU backend computes it: through an f16 lookup table
/// (input and output rounded to f16), identity above 10 and zero below -10.
/// Matching it keeps our logits close to llama.cpp's reference outputs.
#[inline]
pub fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        f16::from_bits(gelu_table()[f32_to_f16_bits(x) as usize]).to_f32()
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Rotary embedding frequencies as ggml computes them: `theta_scale =
/// base^(-2/d)` in f32, and the angle for pair i is `pos * theta_scale^i`
/// accumulated by repeated f32 multiplication (matching llama.cpp's rounding).
pub struct Rope {
    pub theta_scale: f32,
    pub pairs: usize,
    /// Per-pair divisors of the angle (Llama 3 scaling, GGUF `rope_freqs`);
    /// empty when unscaled.
    pub freq_factors: Vec<f32>,
}

impl Rope {
    /// Rotates the first `d` dimensions of a head.
    pub fn new(d: usize, base: f32) -> Rope {
        Rope { theta_scale: base.powf(-2.0 / d as f32), pairs: d / 2, freq_factors: Vec::new() }
    }
}

/// cos and sin of every pair's angle at `pos` (computed once per row and
/// reused by every head and layer).
pub fn rope_table(pos: usize, rope: &Rope, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
    cos.clear();
    sin.clear();
    let mut theta = pos as f32;
    for i in 0..rope.pairs {
        let t = match rope.freq_factors.get(i) {
            Some(f) => theta / f,
            None => theta,
        };
        cos.push(t.cos());
        sin.push(t.sin());
        theta *= rope.theta_scale;
    }
}

/// Rotates one head (normal layout: adjacent pairs (2i, 2i + 1)), as GGUF
/// files converted from Llama checkpoints expect.
pub fn rope_norm(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (i, p) in x.chunks_exact_mut(2).take(cos.len()).enumerate() {
        let (a, b) = (p[0], p[1]);
        p[0] = a * cos[i] - b * sin[i];
        p[1] = a * sin[i] + b * cos[i];
    }
}

/// g = silu(g) * u, element-wise (SwiGLU).
///
/// Uses `exp_f32` rather than libm's `expf` so that the AVX-512 version gives
/// the same bits 16 lanes at a time (libm's was a tenth of an 8-row verify pass
/// of R1-Distill-Qwen-1.5B, on one thread).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::matmul::isa() == crate::matmul::Isa::Avx512Vnni {
        // SAFETY: the ISA check covers AVX-512F and FMA.
        unsafe { crate::matmul::avx512::silu_mul(g, u) };
        return;
    }
    silu_mul_scalar(g, u);
}

/// `silu_mul` on any CPU.
pub fn silu_mul_scalar(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + crate::matmul::scalar::exp_f32(-*a)) * b;
    }
}

/// Index of the largest value, the first one on ties; NaNs never win (0 when
/// the first value is NaN). The greedy choice of every verified row: a scalar
/// loop over Gemma's 262,144 logits took ~0.28 ms a row, this ~17 us.
pub fn argmax(x: &[f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::matmul::isa() == crate::matmul::Isa::Avx512Vnni {
        // SAFETY: the ISA check covers AVX-512F.
        return unsafe { crate::matmul::avx512::argmax(x) };
    }
    argmax_scalar(x)
}

/// `argmax` on any CPU.
pub fn argmax_scalar(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// `argmax` of one row fed in consecutive chunks (`matmul_argmax` scans a
/// row's logits a cache-sized chunk at a time, on each thread). The same
/// index as `argmax` over the whole row: the first maximum, NaNs never win,
/// 0 when column 0 is NaN.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArgmaxScan {
    /// The best (value, column) so far; never a NaN unless `pinned`.
    best: Option<(f32, usize)>,
    /// Column 0 was NaN: the answer is 0 whatever follows.
    pinned: bool,
}

impl ArgmaxScan {
    /// Feeds the values of columns `start..start + x.len()`. Chunks come in
    /// column order.
    pub fn feed(&mut self, start: usize, x: &[f32]) {
        if self.pinned || x.is_empty() {
            return;
        }
        if start == 0 && x[0].is_nan() {
            self.pinned = true;
            return;
        }
        // `argmax` of a slice starting with a NaN answers 0: skip them.
        let Some(s) = x.iter().position(|v| !v.is_nan()) else { return };
        let i = s + argmax(&x[s..]);
        self.offer(x[i], start + i);
    }

    /// Takes in what `later` saw over columns after all of this scan's.
    pub fn merge(&mut self, later: &ArgmaxScan) {
        if later.pinned && self.best.is_none() {
            self.pinned = true; // `later` began at column 0
        }
        if let (false, Some((v, i))) = (self.pinned, later.best) {
            self.offer(v, i);
        }
    }

    fn offer(&mut self, v: f32, i: usize) {
        // Strictly larger only: an equal value further right never wins.
        if self.best.is_none_or(|(b, _)| v > b) {
            self.best = Some((v, i));
        }
    }

    /// The row's argmax.
    pub fn index(&self) -> usize {
        if self.pinned {
            return 0;
        }
        self.best.map_or(0, |(_, i)| i)
    }
}

/// Rotates one head (NEOX layout: pairs (i, i + d/2)) by a `rope_table`.
pub fn rope_neox(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (lo, hi) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (lo[i], hi[i]);
        lo[i] = a * cos[i] - b * sin[i];
        hi[i] = a * sin[i] + b * cos[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_argmax_scan_equals_argmax() {
        for (n, seed) in [(1usize, 11u32), (5, 12), (40, 13), (1000, 14), (5000, 15)] {
            let base = crate::test_data(n, seed, 8.0);
            // Variants: as is; ties (the maximum again further right); NaNs
            // sprinkled (also at chunk starts); column 0 NaN; all -inf.
            let mut cases = vec![base.clone()];
            let at = argmax_scalar(&base);
            let mut ties = base.clone();
            for j in [n / 2, n - 1] {
                if j > at {
                    ties[j] = ties[at];
                }
            }
            cases.push(ties.clone());
            let mut nans = ties.clone();
            for j in (1..n).step_by(3) {
                if j != at {
                    nans[j] = f32::NAN;
                }
            }
            cases.push(nans.clone());
            let mut first_nan = base.clone();
            first_nan[0] = f32::NAN;
            cases.push(first_nan);
            cases.push(vec![f32::NEG_INFINITY; n]);
            for (ci, x) in cases.iter().enumerate() {
                let want = argmax_scalar(x);
                for chunk in [1usize, 3, 16, 17, 1000] {
                    // Two "threads": columns split at `cut`, each scanning its
                    // part in chunks, merged in column order.
                    for cut in [0, n / 3, n] {
                        let scan = |lo: usize, hi: usize| {
                            let mut s = ArgmaxScan::default();
                            let mut c = lo;
                            while c < hi {
                                let e = (c + chunk).min(hi);
                                s.feed(c, &x[c..e]);
                                c = e;
                            }
                            s
                        };
                        let mut s = scan(0, cut);
                        s.merge(&scan(cut, n));
                        assert_eq!(s.index(), want, "n {n} case {ci} chunk {chunk} cut {cut}");
                    }
                }
            }
        }
    }

    #[test]
    fn argmax_matches_the_scalar_loop_on_ties_nans_and_tails() {
        for (n, seed) in [(1usize, 1u32), (15, 2), (16, 3), (17, 4), (1000, 5), (262_144, 6)] {
            let mut x = crate::test_data(n, seed, 8.0);
            assert_eq!(argmax(&x), argmax_scalar(&x), "n {n}");
            // The maximum repeated later (ties go to the first), NaNs around it,
            // and signed zeros as the largest values.
            let at = argmax_scalar(&x);
            for j in [n / 3, n - 1] {
                if j > at {
                    x[j] = x[at];
                }
            }
            for j in (1..n).step_by(7) {
                if j != at && j != n / 3 && j != n - 1 {
                    x[j] = f32::NAN;
                }
            }
            assert_eq!(argmax(&x), argmax_scalar(&x), "n {n}, ties and NaNs");
            assert_eq!(argmax(&x), at);
            let mut z: Vec<f32> = x.iter().map(|v| if v.is_nan() { *v } else { -v.abs() - 1.0 }).collect();
            z[n / 2] = -0.0;
            z[n - 1] = 0.0;
            assert_eq!(argmax(&z), argmax_scalar(&z), "n {n}, zeros");
            // A NaN first: nothing beats it in the scalar loop.
            x[0] = f32::NAN;
            assert_eq!((argmax(&x), argmax_scalar(&x)), (0, 0));
        }
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 40]), 0);
    }

    #[test]
    fn gelu_table_tracks_the_formula_and_simd_matches_scalar() {
        let xs: Vec<f32> = (0..2000).map(|i| (i as f32 - 1000.0) * 0.013).chain([-12.0, 11.0, -10.0, 10.0]).collect();
        for &x in &xs {
            assert!((gelu(x) - gelu_exact(x)).abs() <= 2e-3 * (1.0 + x.abs()), "{x}");
        }
        let u: Vec<f32> = xs.iter().map(|v| 0.5 - v * 0.1).collect();
        let mut g = xs.clone();
        gelu_mul(&mut g, &u);
        for ((&x, &uu), &r) in xs.iter().zip(&u).zip(&g) {
            assert_eq!(r, gelu(x) * uu, "{x}");
        }
    }

    #[test]
    fn silu_mul_tracks_the_formula_and_simd_matches_scalar() {
        // Pseudo-random inputs over the whole useful range, plus the clamp
        // edges, zeros, a NaN and lengths that leave a partial last vector.
        let mut xs = crate::test_data(1000, 0x2545_f491, 30.0);
        xs.extend([-120.0, -88.5, -87.0, -0.0, 0.0, 87.5, 88.0, 120.0, f32::NAN]);
        let us = crate::test_data(xs.len(), 0x9e37_79b9, 4.0);
        for n in [xs.len(), 1, 15, 17, 33] {
            let mut g = xs[..n].to_vec();
            let mut want = g.clone();
            silu_mul(&mut g, &us[..n]);
            silu_mul_scalar(&mut want, &us[..n]);
            for i in 0..n {
                assert_eq!(g[i].to_bits(), want[i].to_bits(), "x {} u {}", xs[i], us[i]);
            }
        }
        let mut g = xs.clone();
        silu_mul(&mut g, &us);
        for ((&x, &u), &r) in xs.iter().zip(&us).zip(&g) {
            if x.is_nan() {
                assert!(r.is_nan());
                continue;
            }
            let (x64, u64) = (x as f64, u as f64);
            let exact = x64 / (1.0 + (-x64).exp()) * u64;
            assert!((r as f64 - exact).abs() <= 1e-6 * exact.abs() + 1e-30, "x {x} u {u}: {r} vs {exact}");
        }
    }

    #[test]
    fn simd_rmsnorm_equals_scalar() {
        for (n, seed) in [(640usize, 1u32), (256, 2), (1024, 3), (2048, 4), (7, 5), (45, 6), (300, 7)] {
            let x = crate::test_data(n, seed, 6.0);
            let w = crate::test_data(n, seed + 100, 2.0);
            let mut a = x.clone();
            let total = sum_squares(&x);
            let scale = 1.0 / ((total / n as f64) as f32 + 1e-6).sqrt();
            a.iter_mut().zip(&w).for_each(|(v, &g)| *v = *v * scale * g);
            let mut b = x.clone();
            rmsnorm(&mut b, &w, 1e-6);
            assert_eq!(a, b, "n {n}");
            // Against a plain f64 sum: the same value up to rounding.
            let plain: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            assert!((total - plain).abs() <= 1e-12 * plain, "n {n}: {total} vs {plain}");
        }
    }

    #[test]
    fn rmsnorm_and_rope_are_correct() {
        let mut x = vec![3.0f32, 4.0];
        rmsnorm(&mut x, &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] - 8.0 / r).abs() < 1e-6);
        // Rope preserves the norm of each pair and is the identity at position 0.
        let rope = Rope::new(8, 10_000.0);
        let (mut c, mut s) = (vec![], vec![]);
        let h: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
        rope_table(0, &rope, &mut c, &mut s);
        let mut y = h.clone();
        rope_neox(&mut y, &c, &s);
        assert_eq!(y, h);
        rope_table(17, &rope, &mut c, &mut s);
        rope_neox(&mut y, &c, &s);
        for i in 0..4 {
            let (a, b) = (h[i].hypot(h[i + 4]), y[i].hypot(y[i + 4]));
            assert!((a - b).abs() < 1e-4);
        }
    }
}
