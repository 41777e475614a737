//! Small f32 operations of a transformer block. Each works on one row at a
//! time, so results never depend on how many rows share a pass.

use std::sync::OnceLock;

use half::f16;

/// y = x / rms(x) * w, with the sum of squares in f64 (as ggml does).
pub fn rmsnorm(x: &mut [f32], w: &[f32], eps: f32) {
    // Four f64 partial sums keep the loop short without changing results
    // between calls (the order is fixed).
    let mut ss = [0f64; 4];
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..4 {
            ss[i] += (c[i] as f64) * (c[i] as f64);
        }
    }
    let mut total = (ss[0] + ss[1]) + (ss[2] + ss[3]);
    for &v in rest {
        total += (v as f64) * (v as f64);
    }
    let scale = 1.0 / ((total / x.len() as f64) as f32 + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
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

/// f32 -> f16 bits, round to nearest even (no F16C needed).
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
}

impl Rope {
    pub fn new(d: usize, base: f32) -> Rope {
        Rope { theta_scale: base.powf(-2.0 / d as f32), pairs: d / 2 }
    }
}

/// cos and sin of every pair's angle at `pos` (computed once per row and
/// reused by every head and layer).
pub fn rope_table(pos: usize, rope: &Rope, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
    cos.clear();
    sin.clear();
    let mut theta = pos as f32;
    for _ in 0..rope.pairs {
        cos.push(theta.cos());
        sin.push(theta.sin());
        theta *= rope.theta_scale;
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
