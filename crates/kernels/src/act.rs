//! Activation quantization: each row of f32 activations becomes int8 values
//! with one scale per 32 and the sum of each 16 values (for the `-c * sum(a)`
//! correction of unsigned weights and the `m * sum(a)` term of affine weights).
//!
//! Two styles, matching what ggml pairs with each weight type so that our
//! numbers stay close to llama.cpp's reference outputs:
//! - `Q8_0`: per-32 scale `amax / 127`, stored rounded to f16;
//! - `Q8_K`: per-256 scale `max / -127` (signed max, f32), for K-quants.
//!
//! Rows are quantized independently: a row's numbers never depend on how many
//! rows share the pass (batch invariance).

use half::f16;

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActStyle {
    Q8_0,
    Q8_K,
}

#[derive(Default, Clone)]
pub struct QuantActs {
    pub m: usize,
    pub k: usize,
    /// m x k int8 values.
    pub qs: Vec<i8>,
    /// m x k/32 scales (a Q8_K scale is repeated over its eight 32-blocks).
    pub d: Vec<f32>,
    /// m x k/16 sums of qs.
    pub sum16: Vec<i32>,
}

/// Round to nearest, ties to even, for |v| < 2^22 (ggml's `nearest_int`).
#[inline]
fn nearest(v: f32) -> f32 {
    (v + 12_582_912.0) - 12_582_912.0
}

impl QuantActs {
    /// Quantizes `x` (m rows of k, k a multiple of 32; of 256 for Q8_K), reusing buffers.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, style: ActStyle) {
        let blk = if style == ActStyle::Q8_K { 256 } else { 32 };
        assert!(k.is_multiple_of(blk) && x.len() == m * k, "activations {m}x{k}, len {}", x.len());
        self.m = m;
        self.k = k;
        self.qs.resize(m * k, 0);
        self.d.resize(m * k / 32, 0.0);
        self.sum16.resize(m * k / 16, 0);
        for (i, xb) in x.chunks_exact(blk).enumerate() {
            let q = &mut self.qs[i * blk..(i + 1) * blk];
            let d = match style {
                ActStyle::Q8_0 => {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    for (qv, &v) in q.iter_mut().zip(xb) {
                        *qv = nearest(v * id) as i8;
                    }
                    f16::from_f32(amax / 127.0).to_f32()
                }
                ActStyle::Q8_K => {
                    let (mut amax, mut max) = (0f32, 0f32);
                    for &v in xb {
                        if v.abs() > amax {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    if amax == 0.0 {
                        q.fill(0);
                        0.0
                    } else {
                        let iscale = -127.0 / max;
                        for (qv, &v) in q.iter_mut().zip(xb) {
                            *qv = nearest(iscale * v).min(127.0) as i8;
                        }
                        1.0 / iscale
                    }
                }
            };
            self.d[i * blk / 32..(i + 1) * blk / 32].fill(d);
            for (h, s) in q.chunks_exact(16).zip(self.sum16[i * blk / 16..(i + 1) * blk / 16].iter_mut()) {
                *s = h.iter().map(|&v| v as i32).sum();
            }
        }
    }
}

/// Scratch for both styles, so one pass can feed weights of either kind.
#[derive(Default, Clone)]
pub struct ActScratch {
    pub q8_0: QuantActs,
    pub q8_k: QuantActs,
}
