//! Small f32 operations of a transformer block. Each works on one row at a
//! time, so results never depend on how many rows share a pass.

/// y = x / rms(x) * w, with the sum of squares in f64 (as ggml does).
pub fn rmsnorm(x: &mut [f32], w: &[f32], eps: f32) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let scale = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
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

/// GELU, tanh approximation.
#[inline]
pub fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
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

/// Inverse frequencies of NEOX-style rotary embeddings for head size `d`.
pub fn rope_inv_freq(d: usize, base: f32) -> Vec<f32> {
    (0..d / 2).map(|i| (base as f64).powf(-2.0 * i as f64 / d as f64) as f32).collect()
}

/// Rotates one head `x` (NEOX layout: pairs (i, i + d/2)) to position `pos`.
pub fn rope_neox(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let half = inv_freq.len();
    for (i, &f) in inv_freq.iter().enumerate() {
        let theta = pos as f32 * f;
        let (s, c) = theta.sin_cos();
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = a * s + b * c;
    }
}
