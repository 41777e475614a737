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

use crate::pool::Pool;

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActStyle {
    Q8_0,
    Q8_K,
}

/// Row-major arrays for the scalar and AVX2 kernels (empty after a
/// quantization for the AVX-512 kernels alone, see `quantize_par`), and the
/// same values tiled for the AVX-512 kernels.
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

/// Round to nearest, ties to even, for |v| < 2^22 (ggml's `nearest_int`).
#[inline]
fn nearest(v: f32) -> f32 {
    (v + 12_582_912.0) - 12_582_912.0
}

/// Raw pointers to every array of a `QuantActs`, sized for the pass, so that
/// threads can write the blocks they own.
struct RawActs {
    m: usize,
    k: usize,
    style: ActStyle,
    /// Whether the row-major arrays are written (the scalar and AVX2
    /// kernels read them; the AVX-512 ones read the tiled copy only).
    row_major: bool,
    qs: *mut i8,
    d: *mut f32,
    sum16: *mut i32,
    corr128: *mut i32,
    corr16: *mut i32,
    dsum: *mut f32,
    corr32: *mut i32,
    /// The tiled copy (`Tiled`), when the AVX-512 kernels exist on this CPU.
    tiled: Option<[*mut u8; 6]>,
}

// SAFETY: the pointers are only written through `quantize_blocks`, and no two
// threads are given the same blocks.
unsafe impl Sync for RawActs {}

impl RawActs {
    /// Quantization blocks per row (32 values for Q8_0, 256 for Q8_K).
    fn blocks(&self) -> usize {
        self.k / if self.style == ActStyle::Q8_K { 256 } else { 32 }
    }

    /// Quantizes blocks `i0..i1` of row `r` of `x` (m x k) into the row-major
    /// arrays (when asked) and the tiled copy (when present). Blocks are
    /// independent, so a row's values never depend on the pass's height or
    /// on how it is split over threads (batch invariance).
    ///
    /// # Safety
    /// `r < m`, `i1 <= self.blocks()`, `x.len() == m * k`, the arrays sized by
    /// `QuantActs::resize`, and no other thread writes these blocks meanwhile.
    unsafe fn quantize_blocks(&self, x: &[f32], r: usize, i0: usize, i1: usize) {
        #[cfg(target_arch = "x86_64")]
        if crate::matmul::isa() == crate::matmul::Isa::Avx512Vnni {
            return self.quantize_blocks_avx512(x, r, i0, i1);
        }
        self.quantize_blocks_scalar(x, r, i0, i1)
    }

    /// `quantize_blocks` in plain Rust, a block at a time through a staging
    /// copy.
    ///
    /// # Safety
    /// As `quantize_blocks`.
    unsafe fn quantize_blocks_scalar(&self, x: &[f32], r: usize, i0: usize, i1: usize) {
        let (k, style) = (self.k, self.style);
        let blk = if style == ActStyle::Q8_K { 256 } else { 32 };
        // One block's values and 16-sums, before they go to their places.
        let (mut q, mut s16) = ([0i8; 256], [0i32; 16]);
        for i in i0..i1 {
            let xb = &x[r * k + i * blk..r * k + (i + 1) * blk];
            let (q, s16) = (&mut q[..blk], &mut s16[..blk / 16]);
            let di = match style {
                ActStyle::Q8_0 => f16::from_f32(quantize_q8_0_scalar(xb, q, s16) / 127.0).to_f32(),
                ActStyle::Q8_K => {
                    let (amax, max) = signed_absmax_scalar(xb);
                    if amax == 0.0 {
                        q.fill(0);
                        s16.fill(0);
                        0.0
                    } else {
                        let iscale = -127.0 / max;
                        quantize_q8_k_scalar(xb, iscale, q, s16);
                        1.0 / iscale
                    }
                }
            };
            for (j, b) in (i * blk / 32..(i + 1) * blk / 32).enumerate() {
                std::ptr::copy_nonoverlapping(q.as_ptr().add(j * 32), self.q_at(r, b), 32);
                self.finish_block(r, b, di, s16[2 * j], s16[2 * j + 1]);
            }
        }
    }

    /// `quantize_blocks` with the AVX-512 block quantizers, which write each
    /// 32-block's values straight to `q_at` and return its sums in registers
    /// (staging them in narrower stores and reloading them stalled store
    /// forwarding: quantization was 6.3 % of a prefill, now 3.7 %). Same
    /// values as the scalar path (`simd_and_scalar_quantization_fill_the_same_arrays`).
    ///
    /// # Safety
    /// As `quantize_blocks`, and the CPU has the AVX-512 kernels.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn quantize_blocks_avx512(&self, x: &[f32], r: usize, i0: usize, i1: usize) {
        use crate::matmul::avx512::{quantize32_q8_0, quantize32_q8_k, signed_absmax};
        let k = self.k;
        let xr = x[r * k..(r + 1) * k].as_ptr();
        match self.style {
            ActStyle::Q8_0 => {
                for b in i0..i1 {
                    let (amax, s0, s1) = quantize32_q8_0(xr.add(b * 32), self.q_at(r, b));
                    self.finish_block(r, b, f16::from_f32(amax / 127.0).to_f32(), s0, s1);
                }
            }
            ActStyle::Q8_K => {
                for i in i0..i1 {
                    let (amax, max) = signed_absmax(std::slice::from_raw_parts(xr.add(i * 256), 256));
                    // An all-zero block: zero values and scale, as the scalar path.
                    let iscale = if amax == 0.0 { 0.0 } else { -127.0 / max };
                    let di = if amax == 0.0 { 0.0 } else { 1.0 / iscale };
                    for b in i * 8..i * 8 + 8 {
                        let (s0, s1) = quantize32_q8_k(xr.add(b * 32), iscale, self.q_at(r, b));
                        self.finish_block(r, b, di, s0, s1);
                    }
                }
            }
        }
    }

    /// Where the 32 values of 32-block `b` of row `r` go first: the tiled
    /// copy when there is one (see `Tiled`), else the row-major array.
    #[inline]
    unsafe fn q_at(&self, r: usize, b: usize) -> *mut i8 {
        match self.tiled {
            Some([tq, ..]) => (tq as *mut i8).add(self.tiled_at(r, b) * 32),
            None => self.qs.add(r * self.k + b * 32),
        }
    }

    /// Index of row `r`, 32-block `b` in the tiled copy's per-block arrays.
    #[inline]
    fn tiled_at(&self, r: usize, b: usize) -> usize {
        let t0 = r - r % TILE;
        t0 * (self.k / 32) + b * (self.m - t0).min(TILE) + (r - t0)
    }

    /// The rest of row `r`'s 32-block `b`, whose values are at `q_at(r, b)`:
    /// its scale `di` and 16-sums `s0`, `s1`, and the per-block terms of the
    /// kernels' epilogues, in each layout written (the values copied to the
    /// row-major array when both are).
    #[inline]
    unsafe fn finish_block(&self, r: usize, b: usize, di: f32, s0: i32, s1: i32) {
        let sum = s0 + s1;
        let (c128, c16, ds) = (-128 * sum, -16 * sum, di * sum as f32);
        if self.row_major {
            let at = r * (self.k / 32) + b;
            if self.tiled.is_some() {
                std::ptr::copy_nonoverlapping(self.q_at(r, b), self.qs.add(at * 32), 32);
            }
            *self.sum16.add(2 * at) = s0;
            *self.sum16.add(2 * at + 1) = s1;
            *self.d.add(at) = di;
            *self.corr128.add(at) = c128;
            *self.corr16.add(at) = c16;
            *self.dsum.add(at) = ds;
            *self.corr32.add(2 * at) = -32 * s0;
            *self.corr32.add(2 * at + 1) = -32 * s1;
        }
        if let Some([_, td, tds, t128, t16, t32]) = self.tiled {
            let at = self.tiled_at(r, b);
            *(td as *mut f32).add(at) = di;
            *(tds as *mut f32).add(at) = ds;
            *(t128 as *mut i32).add(at) = c128;
            *(t16 as *mut i32).add(at) = c16;
            *(t32 as *mut i32).add(2 * at) = -32 * s0;
            *(t32 as *mut i32).add(2 * at + 1) = -32 * s1;
        }
    }
}

impl QuantActs {
    /// Sizes the arrays for m x k (reusing capacity) and returns raw views:
    /// the tiled copy on CPUs with the AVX-512 kernels, the row-major arrays
    /// when `row_major` or when there is no tiled copy.
    fn resize(&mut self, m: usize, k: usize, style: ActStyle, row_major: bool) -> RawActs {
        let blk = if style == ActStyle::Q8_K { 256 } else { 32 };
        assert!(k.is_multiple_of(blk), "activations {m}x{k}: width not a multiple of {blk}");
        let nb = k / 32;
        self.m = m;
        self.k = k;
        let tiled = crate::matmul::avx512_available().then(|| {
            let t = &mut self.tiled;
            t.qs.resize(m * k, 0);
            t.d.resize(m * nb, 0.0);
            t.dsum.resize(m * nb, 0.0);
            t.corr128.resize(m * nb, 0);
            t.corr16.resize(m * nb, 0);
            t.corr32.resize(2 * m * nb, 0);
            [
                t.qs.as_mut_ptr() as *mut u8,
                t.d.as_mut_ptr() as *mut u8,
                t.dsum.as_mut_ptr() as *mut u8,
                t.corr128.as_mut_ptr() as *mut u8,
                t.corr16.as_mut_ptr() as *mut u8,
                t.corr32.as_mut_ptr() as *mut u8,
            ]
        });
        let row_major = row_major || tiled.is_none();
        // Unused row-major arrays are emptied so nothing can read stale values.
        let n = |len: usize| if row_major { len } else { 0 };
        self.qs.resize(n(m * k), 0);
        self.d.resize(n(m * nb), 0.0);
        self.sum16.resize(n(m * k / 16), 0);
        self.corr128.resize(n(m * nb), 0);
        self.corr16.resize(n(m * nb), 0);
        self.dsum.resize(n(m * nb), 0.0);
        self.corr32.resize(n(m * k / 16), 0);
        RawActs {
            m,
            k,
            style,
            row_major,
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            sum16: self.sum16.as_mut_ptr(),
            corr128: self.corr128.as_mut_ptr(),
            corr16: self.corr16.as_mut_ptr(),
            dsum: self.dsum.as_mut_ptr(),
            corr32: self.corr32.as_mut_ptr(),
            tiled,
        }
    }

    /// Quantizes `x` (m rows of k, k a multiple of 32; of 256 for Q8_K) into
    /// both layouts, reusing buffers.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, style: ActStyle) {
        self.quantize_par(None, x, m, k, style, true);
    }

    /// As `quantize`, split over the pool's threads when there is a pool, and
    /// into the tiled copy alone when `row_major` is false (and the CPU has
    /// the AVX-512 kernels). Passes of two tiles or more are split by whole
    /// tiles, shorter ones by blocks: the tiled copy interleaves a tile's rows
    /// block by block, so threads given alternate rows would share every
    /// cache line.
    pub fn quantize_par(
        &mut self,
        pool: Option<&Pool>,
        x: &[f32],
        m: usize,
        k: usize,
        style: ActStyle,
        row_major: bool,
    ) {
        assert_eq!(x.len(), m * k, "activations {m}x{k}, len {}", x.len());
        let raw = self.resize(m, k, style, row_major);
        let nq = raw.blocks();
        let Some(pool) = pool.filter(|p| p.threads() > 1) else {
            for r in 0..m {
                // SAFETY: r < m, arrays sized for m x k, one thread.
                unsafe { raw.quantize_blocks(x, r, 0, nq) };
            }
            return;
        };
        let (tiles, nt) = (m.div_ceil(TILE), pool.threads());
        pool.run(&|t| {
            if tiles >= 2 * nt {
                for r in (tiles * t / nt * TILE).min(m)..(tiles * (t + 1) / nt * TILE).min(m) {
                    // SAFETY: r < m, arrays sized for m x k, and thread t
                    // alone writes the rows of its tiles.
                    unsafe { raw.quantize_blocks(x, r, 0, nq) };
                }
            } else {
                let (i0, i1) = (nq * t / nt, nq * (t + 1) / nt);
                for r in 0..m {
                    // SAFETY: as above, thread t alone writes blocks i0..i1.
                    unsafe { raw.quantize_blocks(x, r, i0, i1) };
                }
            }
        });
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
                let mut s1 = vec![0; 2];
                let a1 = quantize_q8_0_scalar(&x[..32], &mut q1, &mut s1);
                let (a2, s20, s21) = unsafe { crate::matmul::avx512::quantize32_q8_0(x.as_ptr(), q2.as_mut_ptr()) };
                let mut y = x.clone();
                y[200] = -y.iter().fold(0f32, |a, v| a.max(v.abs())); // a tie of magnitudes, opposite signs
                y[201] = -y[200];
                let mut z = x.clone();
                // NaNs never win, nor hide a maximum seen before them in a lane.
                (z[3], z[67], z[100], z[255]) = (-9.0, f32::NAN, f32::NAN, f32::NAN);
                for xs in [&x[..], &y[..], &z[..], &x[..32], &x[..16], &x[..17]] {
                    assert_eq!(signed_absmax_scalar(xs), unsafe { crate::matmul::avx512::signed_absmax(xs) });
                }
                assert_eq!((a1, &q1, &s1), (a2, &q2, &vec![s20, s21]));
                let (mut k1, mut k2) = (vec![0i8; 256], vec![0i8; 256]);
                let (mut t1, mut t2) = (vec![0; 16], vec![0; 16]);
                quantize_q8_k_scalar(&x, -127.0 / 3.3, &mut k1, &mut t1);
                for j in 0..8 {
                    let (a, b) = unsafe {
                        crate::matmul::avx512::quantize32_q8_k(
                            x.as_ptr().add(32 * j),
                            -127.0 / 3.3,
                            k2.as_mut_ptr().add(32 * j),
                        )
                    };
                    (t2[2 * j], t2[2 * j + 1]) = (a, b);
                }
                assert_eq!((&k1, &t1), (&k2, &t2));
            }
        }
    }

    /// Both kernels' paths through `QuantActs` (the AVX-512 one writes the
    /// tiled copy directly) give the same row-major arrays and tiled copy.
    #[test]
    fn simd_and_scalar_quantization_fill_the_same_arrays() {
        #[cfg(target_arch = "x86_64")]
        if crate::matmul::avx512::available() {
            for (style, k) in [(ActStyle::Q8_0, 640), (ActStyle::Q8_K, 1024)] {
                for m in [1, 3, 8, 11] {
                    let mut x = data(m * k, m as u32 * 7 + k as u32);
                    x[..256].iter_mut().for_each(|v| *v = 0.0); // all-zero blocks
                    let mut a = QuantActs::default();
                    a.quantize(&x, m, k, style);
                    let mut b = QuantActs::default();
                    let rb = b.resize(m, k, style, true);
                    for r in 0..m {
                        // SAFETY: one thread, arrays sized by `resize`.
                        unsafe { rb.quantize_blocks_scalar(&x, r, 0, rb.blocks()) };
                    }
                    assert_eq!(
                        (&a.qs, &a.d, &a.sum16, &a.corr128, &a.corr16),
                        (&b.qs, &b.d, &b.sum16, &b.corr128, &b.corr16)
                    );
                    assert_eq!((&a.dsum, &a.corr32), (&b.dsum, &b.corr32));
                    let (ta, tb) = (&a.tiled, &b.tiled);
                    assert_eq!(
                        (&ta.qs, &ta.d, &ta.dsum, &ta.corr128, &ta.corr16, &ta.corr32),
                        (&tb.qs, &tb.d, &tb.dsum, &tb.corr128, &tb.corr16, &tb.corr32)
                    );
                }
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
