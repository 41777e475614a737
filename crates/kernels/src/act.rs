//! Activation quantization: each row of f32 activations becomes int8 values
//! with one scale per 32 (stored rounded to f16, as ggml's Q8_0 does) and the
//! sum of each 16 values (for the `-c * sum(a)` correction of unsigned weights
//! and the `m * sum(a)` term of affine weights).
//!
//! Rows are quantized independently: a row's numbers never depend on how many
//! rows share the pass (batch invariance).

use half::f16;

#[derive(Default, Clone)]
pub struct QuantActs {
    pub m: usize,
    pub k: usize,
    /// m x k int8 values.
    pub qs: Vec<i8>,
    /// m x k/32 scales.
    pub d: Vec<f32>,
    /// m x k/16 sums of qs.
    pub sum16: Vec<i32>,
}

impl QuantActs {
    /// Quantizes `x` (m rows of k, k a multiple of 32), reusing buffers.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        assert!(k % 32 == 0 && x.len() == m * k, "activations {m}x{k}, len {}", x.len());
        self.m = m;
        self.k = k;
        self.qs.resize(m * k, 0);
        self.d.resize(m * k / 32, 0.0);
        self.sum16.resize(m * k / 16, 0);
        for (i, blk) in x.chunks_exact(32).enumerate() {
            let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            self.d[i] = f16::from_f32(d).to_f32();
            let q = &mut self.qs[i * 32..i * 32 + 32];
            for (qv, &v) in q.iter_mut().zip(blk) {
                *qv = (v * id).round_ties_even() as i8;
            }
            for h in 0..2 {
                self.sum16[2 * i + h] = q[h * 16..h * 16 + 16].iter().map(|&v| v as i32).sum();
            }
        }
    }
}
