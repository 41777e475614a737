//! Portable scalar kernels over the packed layout. They perform the same float
//! operations in the same order as the SIMD kernels (integer block dot, then
//! `fma(acc_i as f32, s * d_a, acc)`; for the K-quants, whose activations have
//! one scale per 256, `fma(acc_i as f32, sc, f)` per block and the super-block
//! scales once per super-block), so SIMD results must match them exactly.

#![allow(clippy::needless_range_loop)]

use half::f16;

use crate::act::QuantActs;
use crate::pack::{PackedKind, PackedMatrix};

#[inline]
fn rd_f16(rec: &[u8], o: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([rec[o], rec[o + 1]])).to_f32()
}
#[inline]
fn rd_f32(rec: &[u8], o: usize) -> f32 {
    f32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]])
}

/// Unsigned value of weight `i` (0..32) of row `lane` in a record.
#[inline]
pub(crate) fn unpack(kind: PackedKind, rec: &[u8], lane: usize, i: usize) -> u8 {
    match kind {
        PackedKind::Q8S => rec[(i / 4) * 64 + lane * 4 + i % 4],
        PackedKind::Q5S | PackedKind::Q4A | PackedKind::Q4K | PackedKind::Q6K => {
            let byte = rec[((i % 16) / 4) * 64 + lane * 4 + i % 4];
            let nib = if i < 16 { byte & 0xF } else { byte >> 4 };
            match kind {
                PackedKind::Q5S => nib | (((rec[256 + lane * 4 + i % 4] >> (i / 4)) & 1) << 4),
                PackedKind::Q6K => {
                    let (j, t) = (i / 4, i % 4);
                    nib | (((rec[256 + (j / 4) * 64 + lane * 4 + t] >> (2 * (j % 4))) & 3) << 4)
                }
                _ => nib,
            }
        }
        PackedKind::F32 => unreachable!(),
    }
}

/// out[r * ld + col] for rows `0..a.m` and the columns of groups `g0..g1`.
///
/// # Safety
/// `out + r * ld + col` must be writable for rows `r < a.m` and the
/// columns `col` of groups `g0..g1` (`out` itself may lie before the buffer,
/// see `matmul_argmax`).
pub unsafe fn matmul_q(w: &PackedMatrix, a: &QuantActs, g0: usize, g1: usize, out: *mut f32, ld: usize) {
    let nb = w.blocks();
    let rb = w.kind.record_bytes();
    let c = w.kind.offset();
    let data = w.q.as_slice();
    for g in g0..g1 {
        for r in 0..a.m {
            let qa = &a.qs[r * a.k..(r + 1) * a.k];
            for lane in 0..16 {
                let col = g * 16 + lane;
                if col >= w.n {
                    break;
                }
                let mut acc = 0f32;
                // Q4K/Q6K: a super-block's terms before its f32 scales (`f`:
                // sum of dot x sc; `mn`: sum of mq x d_a sum(a)).
                let (mut f, mut mn) = (0f32, 0f32);
                for b in 0..nb {
                    let rec = &data[(g * nb + b) * rb..(g * nb + b + 1) * rb];
                    let da = a.d[r * nb + b];
                    let s16 = &a.sum16[r * 2 * nb + 2 * b..r * 2 * nb + 2 * b + 2];
                    let dot = |lo: usize, hi: usize| -> i32 {
                        (lo..hi).map(|i| unpack(w.kind, rec, lane, i) as i32 * qa[b * 32 + i] as i32).sum()
                    };
                    let sb = |i: usize| w.sb[(g * nb.div_ceil(8) + b / 8) * w.sb_stride() + i];
                    let sb_end = b % 8 == 7 || b == nb - 1;
                    match w.kind {
                        PackedKind::Q8S | PackedKind::Q5S => {
                            let so = if w.kind == PackedKind::Q8S { 512 } else { 320 };
                            let s = rd_f16(rec, so + lane * 2);
                            let ai = -c * (s16[0] + s16[1]) + dot(0, 32);
                            acc = (ai as f32).mul_add(s * da, acc);
                        }
                        PackedKind::Q4A => {
                            let (s, m) = (rd_f32(rec, 256 + lane * 4), rd_f32(rec, 320 + lane * 4));
                            acc = (dot(0, 32) as f32).mul_add(s * da, acc);
                            acc = (-m).mul_add(da * (s16[0] + s16[1]) as f32, acc);
                        }
                        PackedKind::Q4K => {
                            // Q8_K activations have one scale per super-block:
                            // d and dmin apply once, at its end.
                            f = (dot(0, 32) as f32).mul_add(rec[256 + lane] as f32, f);
                            mn = (rec[272 + lane] as f32).mul_add(da * (s16[0] + s16[1]) as f32, mn);
                            if sb_end {
                                acc = f.mul_add(sb(lane) * da, acc);
                                acc = (-sb(16 + lane)).mul_add(mn, acc);
                                (f, mn) = (0.0, 0.0);
                            }
                        }
                        PackedKind::Q6K => {
                            for h in 0..2 {
                                let ai = -c * s16[h] + dot(16 * h, 16 * h + 16);
                                f = (ai as f32).mul_add((rec[384 + 16 * h + lane] as i8) as f32, f);
                            }
                            if sb_end {
                                acc = f.mul_add(sb(lane) * da, acc);
                                f = 0.0;
                            }
                        }
                        PackedKind::F32 => unreachable!(),
                    }
                }
                // SAFETY: the caller guarantees this row and column are writable.
                unsafe { *out.wrapping_add(r * ld + col) = acc };
            }
        }
    }
}

/// Dot product in 16 interleaved partial sums (the order the SIMD kernel uses).
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let n16 = x.len() / 16 * 16;
    for i in (0..n16).step_by(16) {
        for l in 0..16 {
            lanes[l] = x[i + l].mul_add(y[i + l], lanes[l]);
        }
    }
    for i in n16..x.len() {
        lanes[i - n16] = x[i].mul_add(y[i], lanes[i - n16]);
    }
    reduce16(&lanes)
}

/// Constants of `exp_f32` (Cephes' expf): ln 2 split in two for an exact
/// range reduction, then a degree-5 polynomial on [-ln2/2, ln2/2].
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
pub(crate) const EXP_P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// e^x for softmax weights, with exactly the f32 operations (fused where
/// fused) of the SIMD version, so every ISA gives the same bits (libm's expf
/// cannot be vectorized to match). Input clamped to [-87, 88]; ~1 ulp.
#[allow(clippy::manual_clamp)] // max/min map NaN to -87 like _mm512_max_ps; clamp keeps NaN
pub fn exp_f32(x: f32) -> f32 {
    let x = x.max(-87.0).min(88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let z = r * r;
    let mut y = EXP_P[0];
    for &c in &EXP_P[1..] {
        y = y.mul_add(r, c);
    }
    let y = y.mul_add(z, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Softmax of attention scores in place: max, `exp_f32(s - max)`, a 16-lane
/// sum (lane l adds elements l, l+16, ... in order; then `reduce16`), scale.
pub fn softmax(s: &mut [f32]) {
    let max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut lanes = [0f32; 16];
    for (i, x) in s.iter_mut().enumerate() {
        *x = exp_f32(*x - max);
        lanes[i % 16] += *x;
    }
    let inv = 1.0 / reduce16(&lanes);
    s.iter_mut().for_each(|x| *x *= inv);
}

/// Sums 16 lanes pairwise (8+8, 4+4, 2+2, 1+1), as `_mm512_reduce_add_ps` does.
pub fn reduce16(l: &[f32; 16]) -> f32 {
    let mut v = *l;
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            v[i] += v[i + w];
        }
        w /= 2;
    }
    v[0]
}

/// # Safety
/// `out + r * ld + col` must be writable for rows `r < m` and the
/// columns `col` of groups `g0..g1` (`out` itself may lie before the buffer).
pub unsafe fn matmul_f32(w: &PackedMatrix, x: &[f32], m: usize, g0: usize, g1: usize, out: *mut f32, ld: usize) {
    let k = w.k;
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for col in g0 * 16..(g1 * 16).min(w.n) {
            let v = dot_f32(xr, &w.f[col * k..(col + 1) * k]);
            // SAFETY: as in matmul_q.
            unsafe { *out.wrapping_add(r * ld + col) = v };
        }
    }
}

/// bf16 bits of `x`, rounded to nearest even, denormals to signed zero (what
/// `vcvtne2ps2bf16` computes; checked against it on random data).
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return ((u | 0x0040_0000) >> 16) as u16;
    }
    if u & 0x7f80_0000 == 0 {
        return ((u & 0x8000_0000) >> 16) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16, as an f32.
#[inline]
pub fn bf16_round(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Denormal results flushed to signed zero, as `vdpbf16ps` does.
#[inline]
fn ftz(x: f32) -> f32 {
    if x != 0.0 && x.abs() < f32::MIN_POSITIVE {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// One `vdpbf16ps` lane: `acc + a_odd * b_odd`, then `+ a_even * b_even`,
/// each a single rounding (the products of two bf16 are exact), with
/// denormals flushed. Inputs are already bf16 values.
#[inline]
pub fn dp_bf16_lane(acc: f32, a_even: f32, b_even: f32, a_odd: f32, b_odd: f32) -> f32 {
    ftz(a_even.mul_add(b_even, ftz(a_odd.mul_add(b_odd, ftz(acc)))))
}

/// f32 value of bf16 bits.
#[inline]
pub fn bf16_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Dot product in bf16 products (`AttnMath::Bf16`), `x.len()` a multiple of
/// 32: lane l of 16 takes elements 2l and 2l+1 of each 32 (odd first, as
/// `vdpbf16ps`), then `reduce16`. `x` is bf16-rounded already.
pub fn dot_bf16(x: &[f32], y: &[u16]) -> f32 {
    let mut lanes = [0f32; 16];
    for c in (0..x.len()).step_by(32) {
        for l in 0..16 {
            let (e, o) = (c + 2 * l, c + 2 * l + 1);
            lanes[l] = dp_bf16_lane(lanes[l], x[e], bf16_f32(y[e]), x[o], bf16_f32(y[o]));
        }
    }
    reduce16(&lanes)
}

/// Attention of one query head in bf16 products (`AttnMath::Bf16`) over bf16
/// keys (rows of `stride`) and values in pairs of positions (2m, 2m+1)
/// interleaved (`v[m * 2 * stride + 2 * d + j % 2]`, as `KvCache` keeps
/// them). Scores by `dot_bf16` of the rounded query, the f32 softmax, then
/// per pair, odd key first, each probability rounded to bf16:
/// out[d] = dp(out[d], p[2m], v[2m][d], p[2m+1], v[2m+1][d]) from zero. A
/// key of a pair outside `start..=end` weighs 0, so pairing by position
/// rather than by range keeps a row's sums the same however rows are
/// batched. `q.len()` is a multiple of 32.
#[allow(clippy::too_many_arguments)]
pub fn attend_bf16(
    q: &[f32],
    k: &[u16],
    v: &[u16],
    stride: usize,
    start: usize,
    end: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    assert!(hd.is_multiple_of(32) && start <= end && end * stride + hd <= k.len());
    assert!((end / 2) * 2 * stride + 2 * hd <= v.len());
    let qb: Vec<f32> = q.iter().map(|&x| bf16_round(x)).collect();
    scores.clear();
    scores.extend((start..=end).map(|j| dot_bf16(&qb, &k[j * stride..j * stride + hd])));
    softmax(scores);
    let p = |j: usize| if (start..=end).contains(&j) { bf16_round(scores[j - start]) } else { 0.0 };
    out.fill(0.0);
    for m in start / 2..=end / 2 {
        let (pe, po) = (p(2 * m), p(2 * m + 1));
        let pair = &v[m * 2 * stride..];
        for d in 0..hd {
            out[d] = dp_bf16_lane(out[d], pe, bf16_f32(pair[2 * d]), po, bf16_f32(pair[2 * d + 1]));
        }
    }
}
