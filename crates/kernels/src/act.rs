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

use std::sync::Mutex;

use half::f16;

use crate::pool::Pool;

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
    /// m x k/32 per-block terms precomputed for the kernels' epilogues, so a
    /// tile only broadcasts them: `-128 * sum` (Q8S), `-16 * sum` (Q5S),
    /// `d * sum` (the min term of affine weights).
    pub corr128: Vec<i32>,
    pub corr16: Vec<i32>,
    pub dsum: Vec<f32>,
    /// m x k/16: `-32 * sum16` (Q6K, one correction per 16).
    pub corr32: Vec<i32>,
    /// The same values in the AVX-512 kernels' order (see `Tiled`).
    pub tiled: Tiled,
}

/// Rows of a pass in tiles of `TILE` (the last one may be shorter), and within
/// a tile block-major: for the tile starting at row r0, of height mt, row
/// r0 + i and 32-block b sit at
/// - `qs[r0 * k + (b * mt + i) * 32..][..32]`,
/// - `d`, `dsum`, `corr128`, `corr16` at `r0 * nb + b * mt + i`,
/// - `corr32` at `2 * (r0 * nb + b * mt + i)` and the next word.
///
/// A kernel then finds everything one weight record needs for every row of a
/// tile at constant offsets from one pointer: plain `base + disp` operands stay
/// one fused uop, where `base + index` ones split in two on Intel cores.
#[derive(Default, Clone)]
pub struct Tiled {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub dsum: Vec<f32>,
    pub corr128: Vec<i32>,
    pub corr16: Vec<i32>,
    pub corr32: Vec<i32>,
}

/// Row tile height of the AVX-512 kernels.
pub const TILE: usize = 8;

/// Row count from which the tiled copy is made in parallel.
const RETILE_PAR_ROWS: usize = 64;

/// The row-major arrays a tiled copy is made from.
struct RowMajor<'a> {
    k: usize,
    qs: &'a [i8],
    d: &'a [f32],
    dsum: &'a [f32],
    corr128: &'a [i32],
    corr16: &'a [i32],
    corr32: &'a [i32],
}

/// Whole tiles of a `Tiled`, from a tile-aligned row onwards.
struct TiledMut<'a> {
    qs: &'a mut [i8],
    d: &'a mut [f32],
    dsum: &'a mut [f32],
    corr128: &'a mut [i32],
    corr16: &'a mut [i32],
    corr32: &'a mut [i32],
}

impl<'a> TiledMut<'a> {
    /// Splits after `rows` rows of `k` (a multiple of `TILE` unless it is the end).
    fn split(self, rows: usize, k: usize) -> (TiledMut<'a>, TiledMut<'a>) {
        let nb = k / 32;
        let (q0, q1) = self.qs.split_at_mut(rows * k);
        let (d0, d1) = self.d.split_at_mut(rows * nb);
        let (s0, s1) = self.dsum.split_at_mut(rows * nb);
        let (a0, a1) = self.corr128.split_at_mut(rows * nb);
        let (b0, b1) = self.corr16.split_at_mut(rows * nb);
        let (c0, c1) = self.corr32.split_at_mut(2 * rows * nb);
        (
            TiledMut { qs: q0, d: d0, dsum: s0, corr128: a0, corr16: b0, corr32: c0 },
            TiledMut { qs: q1, d: d1, dsum: s1, corr128: a1, corr16: b1, corr32: c1 },
        )
    }

    /// Copies rows `r0..r1` of `m` (`r0` tile-aligned, where these slices start).
    fn fill(self, src: &RowMajor, r0: usize, r1: usize, m: usize) {
        let nb = src.k / 32;
        let mut t0 = r0;
        while t0 < r1 {
            let mt = (m - t0).min(TILE);
            for i in 0..mt {
                let r = t0 + i;
                for b in 0..nb {
                    let (s, d) = (r * nb + b, (t0 - r0) * nb + b * mt + i);
                    self.qs[d * 32..d * 32 + 32].copy_from_slice(&src.qs[s * 32..s * 32 + 32]);
                    self.d[d] = src.d[s];
                    self.dsum[d] = src.dsum[s];
                    self.corr128[d] = src.corr128[s];
                    self.corr16[d] = src.corr16[s];
                    self.corr32[2 * d..2 * d + 2].copy_from_slice(&src.corr32[2 * s..2 * s + 2]);
                }
            }
            t0 += mt;
        }
    }
}

/// Round to nearest, ties to even, for |v| < 2^22 (ggml's `nearest_int`).
#[inline]
fn nearest(v: f32) -> f32 {
    (v + 12_582_912.0) - 12_582_912.0
}

/// Mutable views of whole rows of a `QuantActs`, so rows can be quantized in
/// parallel into disjoint parts.
struct RowsMut<'a> {
    qs: &'a mut [i8],
    d: &'a mut [f32],
    sum16: &'a mut [i32],
    corr128: &'a mut [i32],
    corr16: &'a mut [i32],
    dsum: &'a mut [f32],
    corr32: &'a mut [i32],
}

impl<'a> RowsMut<'a> {
    /// Splits after `rows` rows of `k`.
    fn split(self, rows: usize, k: usize) -> (RowsMut<'a>, RowsMut<'a>) {
        let (qs0, qs1) = self.qs.split_at_mut(rows * k);
        let (d0, d1) = self.d.split_at_mut(rows * k / 32);
        let (s0, s1) = self.sum16.split_at_mut(rows * k / 16);
        let (a0, a1) = self.corr128.split_at_mut(rows * k / 32);
        let (b0, b1) = self.corr16.split_at_mut(rows * k / 32);
        let (m0, m1) = self.dsum.split_at_mut(rows * k / 32);
        let (c0, c1) = self.corr32.split_at_mut(rows * k / 16);
        (
            RowsMut { qs: qs0, d: d0, sum16: s0, corr128: a0, corr16: b0, dsum: m0, corr32: c0 },
            RowsMut { qs: qs1, d: d1, sum16: s1, corr128: a1, corr16: b1, dsum: m1, corr32: c1 },
        )
    }

    /// Quantizes `x` (whole rows, matching these views).
    fn fill(self, x: &[f32], style: ActStyle) {
        let blk = if style == ActStyle::Q8_K { 256 } else { 32 };
        let simd = crate::matmul::isa() == crate::matmul::Isa::Avx512Vnni;
        for (i, xb) in x.chunks_exact(blk).enumerate() {
            let q = &mut self.qs[i * blk..(i + 1) * blk];
            let s16 = &mut self.sum16[i * blk / 16..(i + 1) * blk / 16];
            let d = match style {
                ActStyle::Q8_0 => {
                    #[cfg(target_arch = "x86_64")]
                    let amax = if simd {
                        // SAFETY: the ISA check covers AVX-512 F/BW/DQ.
                        unsafe { crate::matmul::avx512::quantize_block_q8_0(xb, q, s16) }
                    } else {
                        quantize_q8_0_scalar(xb, q, s16)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let amax = quantize_q8_0_scalar(xb, q, s16);
                    f16::from_f32(amax / 127.0).to_f32()
                }
                ActStyle::Q8_K => {
                    #[cfg(target_arch = "x86_64")]
                    let (amax, max) = if simd {
                        // SAFETY: as above.
                        unsafe { crate::matmul::avx512::signed_absmax(xb) }
                    } else {
                        signed_absmax_scalar(xb)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let (amax, max) = signed_absmax_scalar(xb);
                    if amax == 0.0 {
                        q.fill(0);
                        s16.fill(0);
                        0.0
                    } else {
                        let iscale = -127.0 / max;
                        #[cfg(target_arch = "x86_64")]
                        if simd {
                            // SAFETY: as above.
                            unsafe { crate::matmul::avx512::quantize_block_q8_k(xb, iscale, q, s16) };
                        } else {
                            quantize_q8_k_scalar(xb, iscale, q, s16);
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        quantize_q8_k_scalar(xb, iscale, q, s16);
                        1.0 / iscale
                    }
                }
            };
            self.d[i * blk / 32..(i + 1) * blk / 32].fill(d);
        }
        for b in 0..self.d.len() {
            let sum = self.sum16[2 * b] + self.sum16[2 * b + 1];
            self.corr128[b] = -128 * sum;
            self.corr16[b] = -16 * sum;
            self.dsum[b] = self.d[b] * sum as f32;
        }
        for (c, s) in self.corr32.iter_mut().zip(self.sum16.iter()) {
            *c = -32 * s;
        }
    }
}

impl QuantActs {
    fn prepare(&mut self, x: &[f32], m: usize, k: usize, style: ActStyle) -> RowsMut<'_> {
        let blk = if style == ActStyle::Q8_K { 256 } else { 32 };
        assert!(k.is_multiple_of(blk) && x.len() == m * k, "activations {m}x{k}, len {}", x.len());
        self.m = m;
        self.k = k;
        self.qs.resize(m * k, 0);
        self.d.resize(m * k / 32, 0.0);
        self.sum16.resize(m * k / 16, 0);
        self.corr128.resize(m * k / 32, 0);
        self.corr16.resize(m * k / 32, 0);
        self.dsum.resize(m * k / 32, 0.0);
        self.corr32.resize(m * k / 16, 0);
        RowsMut {
            qs: &mut self.qs,
            d: &mut self.d,
            sum16: &mut self.sum16,
            corr128: &mut self.corr128,
            corr16: &mut self.corr16,
            dsum: &mut self.dsum,
            corr32: &mut self.corr32,
        }
    }

    /// Quantizes `x` (m rows of k, k a multiple of 32; of 256 for Q8_K), reusing buffers.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, style: ActStyle) {
        self.prepare(x, m, k, style).fill(x, style);
        self.retile(None);
    }

    /// Fills `tiled` from the row-major arrays (only the AVX-512 kernels read
    /// it, on any CPU that has them, whatever ISA is forced for the process);
    /// tiles split over the pool's threads when there are many rows.
    fn retile(&mut self, pool: Option<&Pool>) {
        if !crate::matmul::avx512_available() {
            return;
        }
        let (m, k) = (self.m, self.k);
        let nb = k / 32;
        let t = &mut self.tiled;
        t.qs.resize(m * k, 0);
        t.d.resize(m * nb, 0.0);
        t.dsum.resize(m * nb, 0.0);
        t.corr128.resize(m * nb, 0);
        t.corr16.resize(m * nb, 0);
        t.corr32.resize(2 * m * nb, 0);
        let src = RowMajor {
            k,
            qs: &self.qs,
            d: &self.d,
            dsum: &self.dsum,
            corr128: &self.corr128,
            corr16: &self.corr16,
            corr32: &self.corr32,
        };
        let mut rest = TiledMut {
            qs: &mut t.qs,
            d: &mut t.d,
            dsum: &mut t.dsum,
            corr128: &mut t.corr128,
            corr16: &mut t.corr16,
            corr32: &mut t.corr32,
        };
        let tiles = m.div_ceil(TILE);
        let (pool, nt) = match pool {
            Some(p) if m >= RETILE_PAR_ROWS && p.threads().min(tiles) > 1 => (p, p.threads().min(tiles)),
            _ => return rest.fill(&src, 0, m, m),
        };
        let mut parts = Vec::with_capacity(nt);
        let mut r0 = 0;
        for i in 0..nt {
            let r1 = (tiles * (i + 1) / nt * TILE).min(m);
            let (head, tail) = rest.split(r1 - r0, k);
            parts.push(Mutex::new(Some((head, r0, r1))));
            rest = tail;
            r0 = r1;
        }
        pool.run(&|i| {
            let part = parts.get(i).and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).take());
            if let Some((dst, r0, r1)) = part {
                dst.fill(&src, r0, r1, m);
            }
        });
    }

    /// As `quantize`, with the rows split over the pool's threads. Each row is
    /// quantized by the same code whatever the split (batch invariance).
    pub fn quantize_par(&mut self, pool: &Pool, x: &[f32], m: usize, k: usize, style: ActStyle) {
        let nt = pool.threads().min(m);
        if nt <= 1 {
            return self.quantize(x, m, k, style);
        }
        let mut rest = self.prepare(x, m, k, style);
        let mut parts = Vec::with_capacity(nt);
        let mut r0 = 0;
        for t in 0..nt {
            let r1 = m * (t + 1) / nt;
            let (head, tail) = rest.split(r1 - r0, k);
            parts.push(Mutex::new(Some((head, &x[r0 * k..r1 * k]))));
            rest = tail;
            r0 = r1;
        }
        pool.run(&|t| {
            let part = parts.get(t).and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).take());
            if let Some((rows, xs)) = part {
                rows.fill(xs, style);
            }
        });
        self.retile(Some(pool));
    }
}

/// The signed value of largest magnitude (first one on ties), with its magnitude.
pub(crate) fn signed_absmax_scalar(xb: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn quantize_q8_0_scalar(xb: &[f32], q: &mut [i8], s16: &mut [i32]) -> f32 {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (qv, &v) in q.iter_mut().zip(xb) {
        *qv = nearest(v * id) as i8;
    }
    for (h, s) in q.chunks_exact(16).zip(s16.iter_mut()) {
        *s = h.iter().map(|&v| v as i32).sum();
    }
    amax
}

fn quantize_q8_k_scalar(xb: &[f32], iscale: f32, q: &mut [i8], s16: &mut [i32]) {
    for (qv, &v) in q.iter_mut().zip(xb) {
        *qv = nearest(iscale * v).min(127.0) as i8;
    }
    for (h, s) in q.chunks_exact(16).zip(s16.iter_mut()) {
        *s = h.iter().map(|&v| v as i32).sum();
    }
}

/// Scratch for both styles, so one pass can feed weights of either kind.
#[derive(Default, Clone)]
pub struct ActScratch {
    pub q8_0: QuantActs,
    pub q8_k: QuantActs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        crate::test_data(n, seed, 3.5)
    }

    #[test]
    fn simd_quantization_equals_scalar() {
        #[cfg(target_arch = "x86_64")]
        if crate::matmul::avx512::available() {
            for seed in 0..20 {
                let mut x = data(256, seed);
                if seed == 3 {
                    x[7] = 0.0;
                    x.iter_mut().take(32).for_each(|v| *v = 0.0);
                }
                let (mut q1, mut q2) = (vec![0i8; 32], vec![0i8; 32]);
                let (mut s1, mut s2) = (vec![0; 2], vec![0; 2]);
                let a1 = quantize_q8_0_scalar(&x[..32], &mut q1, &mut s1);
                let a2 = unsafe { crate::matmul::avx512::quantize_block_q8_0(&x[..32], &mut q2, &mut s2) };
                let mut y = x.clone();
                y[200] = -y.iter().fold(0f32, |a, v| a.max(v.abs())); // a tie of magnitudes, opposite signs
                y[201] = -y[200];
                for xs in [&x[..], &y[..], &x[..32], &x[..16], &x[..17]] {
                    assert_eq!(signed_absmax_scalar(xs), unsafe { crate::matmul::avx512::signed_absmax(xs) });
                }
                assert_eq!((a1, &q1, &s1), (a2, &q2, &s2));
                let (mut k1, mut k2) = (vec![0i8; 256], vec![0i8; 256]);
                let (mut t1, mut t2) = (vec![0; 16], vec![0; 16]);
                quantize_q8_k_scalar(&x, -127.0 / 3.3, &mut k1, &mut t1);
                unsafe { crate::matmul::avx512::quantize_block_q8_k(&x, -127.0 / 3.3, &mut k2, &mut t2) };
                assert_eq!((&k1, &t1), (&k2, &t2));
            }
        }
    }

    #[test]
    fn quantized_values_reconstruct_the_input() {
        let x = data(512, 9);
        for style in [ActStyle::Q8_0, ActStyle::Q8_K] {
            let mut q = QuantActs::default();
            q.quantize(&x, 2, 256, style);
            for (i, &v) in x.iter().enumerate() {
                let r = q.qs[i] as f32 * q.d[i / 32];
                assert!((r - v).abs() <= 3.5 / 127.0 * 1.01, "{style:?} {i}: {r} vs {v}");
            }
            for (j, s) in q.sum16.iter().enumerate() {
                assert_eq!(*s, q.qs[j * 16..j * 16 + 16].iter().map(|&v| v as i32).sum::<i32>());
            }
        }
    }
}
