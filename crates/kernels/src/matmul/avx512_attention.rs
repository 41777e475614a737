//! AVX-512 attention kernels (f32): one head, the heads of a key/value group,
//! and rows of one sequence sharing passes over keys and values. Every path
//! runs the scalar kernels' operations in the same order (`attend_with`,
//! `scalar::softmax`), so results agree bit for bit whatever the batch.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx512::{axpy, dot_f32, exp16, reduce16};

/// One query head against keys/values `start..=end` (row stride `stride`):
/// scores, softmax, weighted sum of values into `out`.
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    start: usize,
    end: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    super::attend_with(
        |a, b| dot_f32(a, b),
        |s, x, y| axpy(s, x, y),
        |s| softmax(s),
        q,
        k,
        v,
        stride,
        start,
        end,
        scores,
        out,
    )
}

/// `G` query heads that share one key/value head, each with exactly the
/// arithmetic of `attend` (same per-lane fma order, same reduction tree, same
/// softmax), so the result equals G separate calls bit for bit. Sharing the
/// pass lets each key and value row be loaded once for all G heads, and keeps
/// KK*G (scores; KK = 4 keys at a time: 0.5 loads per fma instead of 0.75
/// at 2, ~10 % faster) or 4G (values) independent fma chains in flight.
/// `q` and `out` hold G heads of `hd` (a multiple of 16); `scores` G x n.
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_heads<const G: usize>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    start: usize,
    end: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len() / G;
    attend_rows::<G>(q, 0, hd, k, v, stride, &[(start, end)], scores, out, 0)
}

/// Keys per block in `attend_rows`: the rows of one call share a pass over a
/// block (K or V: 128 rows of 1 KB at Gemma 3's shapes stay in L2).
pub(super) const KEY_BLOCK: usize = 128;

/// Key and value rows are prefetched this many rows ahead.
pub(super) const PF_ROWS: usize = 16;

/// `attend_heads` for several query rows at once: row i has its G heads at
/// `q[i * qs..]`, writes `out[i * os..]` and attends keys `ranges[i]`
/// (inclusive). Every score and every value accumulator goes through the
/// operations of `attend_heads` in the same order, so each row equals a
/// separate call bit for bit; only the loop order differs. The rows take turns
/// on one block of keys at a time, so a long prompt's keys and values (which
/// outgrow L2) come from memory once per call instead of once per row; and
/// over the keys that all rows of a group of RR attend, one load of a key or
/// value chunk serves the RR rows (the kernels are bound by those loads).
/// `scores` becomes rows x G x (longest range).
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_rows<const G: usize>(
    q: &[f32],
    qs: usize,
    hd: usize,
    k: &[f32],
    v: &[f32],
    stride: usize,
    ranges: &[(usize, usize)],
    scores: &mut Vec<f32>,
    out: &mut [f32],
    os: usize,
) {
    // RR x G x CW value accumulators and 2 x RR x G score accumulators fit
    // the 32 registers.
    match G {
        1 => attend_rows_rr::<G, 4, 4>(q, qs, hd, k, v, stride, ranges, scores, out, os),
        2 => attend_rows_rr::<G, 4, 2>(q, qs, hd, k, v, stride, ranges, scores, out, os),
        _ => attend_rows_rr::<G, 2, 2>(q, qs, hd, k, v, stride, ranges, scores, out, os),
    }
}

#[target_feature(enable = "avx512f,avx512dq,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_rows_rr<const G: usize, const RR: usize, const CW: usize>(
    q: &[f32],
    qs: usize,
    hd: usize,
    k: &[f32],
    v: &[f32],
    stride: usize,
    ranges: &[(usize, usize)],
    scores: &mut Vec<f32>,
    out: &mut [f32],
    os: usize,
) {
    let rows = ranges.len();
    assert!(rows > 0 && hd.is_multiple_of(16), "attend_rows: no rows, or head dim not a multiple of 16");
    assert!(q.len() >= (rows - 1) * qs + G * hd && out.len() >= (rows - 1) * os + G * hd, "q or out too short");
    for &(s, e) in ranges {
        assert!(s <= e && e * stride + hd <= k.len().min(v.len()), "keys out of range");
    }
    let nmax = ranges.iter().map(|r| r.1 + 1 - r.0).max().unwrap_or(0);
    scores.clear();
    scores.resize(rows * G * nmax, 0.0);
    let (qp, kp, vp, sp, op) = (q.as_ptr(), k.as_ptr(), v.as_ptr(), scores.as_mut_ptr(), out.as_mut_ptr());
    // Row i's keys j0..j1 (a piece of its range) of scores and of values.
    let score_of = |i: usize, j0: usize| sp.add(i * G * nmax + j0 - ranges[i].0);
    let score_piece = |i: usize, j0: usize, j1: usize| {
        if j0 < j1 {
            score_keys::<G, 1, 4>([qp.add(i * qs)], hd, kp, stride, j0, j1, [score_of(i, j0)], nmax);
        }
    };
    let value_piece = |i: usize, j0: usize, j1: usize| {
        if j0 < j1 {
            let (p, vr, o) = (score_of(i, j0) as *const f32, vp.add(j0 * stride), op.add(i * os));
            let first = j0 == ranges[i].0;
            let mut c = 0;
            while c + 4 <= hd / 16 {
                sum_values::<G, 1, 4>([p], nmax, j1 - j0, vr.add(16 * c), stride, [o.add(16 * c)], hd, [first]);
                c += 4;
            }
            while c < hd / 16 {
                sum_values::<G, 1, 1>([p], nmax, j1 - j0, vr.add(16 * c), stride, [o.add(16 * c)], hd, [first]);
                c += 1;
            }
        }
    };
    walk(ranges, RR, KEY_BLOCK, &mut |i, j0, j1| score_piece(i, j0, j1), &mut |gi, x0, x1| {
        let qr: [*const f32; RR] = std::array::from_fn(|r| qp.add((gi * RR + r) * qs));
        let sr: [*mut f32; RR] = std::array::from_fn(|r| score_of(gi * RR + r, x0));
        score_keys::<G, RR, 2>(qr, hd, kp, stride, x0, x1, sr, nmax);
    });
    for (i, &(s, e)) in ranges.iter().enumerate() {
        for h in 0..G {
            let at = (i * G + h) * nmax;
            softmax(&mut scores[at..at + e + 1 - s]);
        }
    }
    // Values: the accumulators of a row wait in `out` between its pieces.
    walk(ranges, RR, KEY_BLOCK, &mut |i, j0, j1| value_piece(i, j0, j1), &mut |gi, x0, x1| {
        let pr: [*const f32; RR] = std::array::from_fn(|r| score_of(gi * RR + r, x0) as *const f32);
        let first: [bool; RR] = std::array::from_fn(|r| x0 == ranges[gi * RR + r].0);
        let mut c = 0;
        while c < hd / 16 {
            let or: [*mut f32; RR] = std::array::from_fn(|r| op.add((gi * RR + r) * os + 16 * c));
            let vr = vp.add(x0 * stride + 16 * c);
            if c + CW <= hd / 16 {
                sum_values::<G, RR, CW>(pr, nmax, x1 - x0, vr, stride, or, hd, first);
                c += CW;
            } else {
                sum_values::<G, RR, 1>(pr, nmax, x1 - x0, vr, stride, or, hd, first);
                c += 1;
            }
        }
    });
}

/// Visits the ranges block by block (`block` positions), in position order
/// per row: a row's piece before its group's joint positions, the joint
/// positions (the group's `rr` rows at once), its piece after; rows outside
/// full groups and blocks without joint positions as single-row pieces.
pub(super) fn walk(
    ranges: &[(usize, usize)],
    rr: usize,
    block: usize,
    piece: &mut dyn FnMut(usize, usize, usize),
    joint_keys: &mut dyn FnMut(usize, usize, usize),
) {
    let rows = ranges.len();
    let groups = rows / rr;
    let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let span = |i: usize, b0: usize, b1: usize| (b0.max(ranges[i].0), b1.min(ranges[i].1 + 1));
    let joint = |gi: usize, b0: usize, b1: usize| {
        let r = &ranges[gi * rr..(gi + 1) * rr];
        (r.iter().map(|x| x.0).max().unwrap_or(0).max(b0), r.iter().map(|x| x.1 + 1).min().unwrap_or(0).min(b1))
    };
    let mut b0 = lo;
    while b0 <= hi {
        let b1 = (b0 + block).min(hi + 1);
        for gi in 0..groups {
            let (x0, x1) = joint(gi, b0, b1);
            for i in gi * rr..(gi + 1) * rr {
                let (j0, j1) = span(i, b0, b1);
                let end = if x0 < x1 { x0 } else { j1 };
                if j0 < end {
                    piece(i, j0, end);
                }
            }
            if x0 < x1 {
                joint_keys(gi, x0, x1);
                for i in gi * rr..(gi + 1) * rr {
                    let j1 = span(i, b0, b1).1;
                    if x1 < j1 {
                        piece(i, x1, j1);
                    }
                }
            }
        }
        for i in groups * rr..rows {
            let (j0, j1) = span(i, b0, b1);
            if j0 < j1 {
                piece(i, j0, j1);
            }
        }
        b0 = b1;
    }
}

/// Scores of keys `j0..j1` for RR rows of G heads: row r's queries at `q[r]`
/// (G x hd), key j's score for its head h at `s[r][h * hs + j - j0]`. Per
/// score: a 16-lane fma chain over the head's chunks in order, then
/// `reduce16` (all 16 at once by `reduce16x16` when KK x RR x G is 16). KK keys at a time: each query chunk load serves KK keys, each
/// key chunk load RR x G query chunks.
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn score_keys<const G: usize, const RR: usize, const KK: usize>(
    q: [*const f32; RR],
    hd: usize,
    k: *const f32,
    stride: usize,
    j0: usize,
    j1: usize,
    s: [*mut f32; RR],
    hs: usize,
) {
    let (n, nc) = (j1 - j0, hd / 16);
    let mut j = 0;
    while j < n {
        let kr: [*const f32; KK] = std::array::from_fn(|t| k.add((j0 + (j + t).min(n - 1)) * stride));
        let mut a = [[[_mm512_setzero_ps(); G]; RR]; KK];
        for c in 0..nc {
            for t in 0..KK {
                _mm_prefetch::<_MM_HINT_T0>(kr[t].wrapping_add(PF_ROWS * stride + 16 * c) as *const i8);
            }
            let kv: [__m512; KK] = std::array::from_fn(|t| _mm512_loadu_ps(kr[t].add(16 * c)));
            for r in 0..RR {
                for h in 0..G {
                    let qv = _mm512_loadu_ps(q[r].add(h * hd + 16 * c));
                    for t in 0..KK {
                        a[t][r][h] = _mm512_fmadd_ps(qv, kv[t], a[t][r][h]);
                    }
                }
            }
        }
        store_scores(&a, s, hs, j, KK.min(n - j));
        j += KK;
    }
}

/// Stores the lane sums of score accumulators `a[t][r][h]` (key j + t, row
/// r, head h) at `s[r][h * hs + j + t]` for t < `keys`: each `reduce16` of
/// its accumulator, all 16 in one transposed tree (46 vector ops instead of
/// 16 x 7) when KK x RR x G is 16.
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
pub(super) unsafe fn store_scores<const G: usize, const RR: usize, const KK: usize>(
    a: &[[[__m512; G]; RR]; KK],
    s: [*mut f32; RR],
    hs: usize,
    j: usize,
    keys: usize,
) {
    if KK * RR * G == 16 {
        let v: [__m512; 16] = std::array::from_fn(|i| a[i / (RR * G)][i / G % RR][i % G]);
        let mut sums = [0f32; 16];
        _mm512_storeu_ps(sums.as_mut_ptr(), reduce16x16(v));
        for r in 0..RR {
            for h in 0..G {
                for t in 0..keys {
                    let i = t * RR * G + r * G + h;
                    // Input i lands in lane (i % 4) * 4 + i / 4.
                    *s[r].add(h * hs + j + t) = sums[(i % 4) * 4 + i / 4];
                }
            }
        }
    } else {
        for r in 0..RR {
            for h in 0..G {
                for t in 0..keys {
                    *s[r].add(h * hs + j + t) = reduce16(a[t][r][h]);
                }
            }
        }
    }
}

/// The lane sums of 16 vectors at once: lane `(i % 4) * 4 + i / 4` of the
/// result is the sum of `v[i]`'s lanes. Each level adds the same pairs that
/// `reduce16` adds (lanes l and l+8, then l and l+4, l and l+2, l and l+1),
/// only for four or more vectors per instruction, so every sum equals
/// `reduce16(v[i])` bit for bit.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce16x16(v: [__m512; 16]) -> __m512 {
    // Two vectors' halves side by side: [a.lo | b.lo] + [a.hi | b.hi].
    let l1: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b))
    });
    // 128-bit quarters: lanes l and l+4 of four vectors.
    let l2: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (l1[2 * i], l1[2 * i + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b))
    });
    // Within each quarter: lanes 0+2 and 1+3, then 0+1.
    let l3: [__m512; 2] = std::array::from_fn(|i| {
        let (a, b) = (l2[2 * i], l2[2 * i + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xEE>(a, b))
    });
    _mm512_add_ps(_mm512_shuffle_ps::<0x88>(l3[0], l3[1]), _mm512_shuffle_ps::<0xDD>(l3[0], l3[1]))
}

/// out[r][h][0..16*CW] (+)= sum over keys j < n of p[r][h * hs + j] *
/// v[j][0..16*CW], j in order (one fma per key: `axpy`'s arithmetic),
/// starting from zero where `first[r]`, else from what `out[r]` holds. Each
/// value chunk load serves RR x G accumulators; const sizes keep the
/// RR x G x CW accumulators in registers.
#[target_feature(enable = "avx512f,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn sum_values<const G: usize, const RR: usize, const CW: usize>(
    p: [*const f32; RR],
    hs: usize,
    n: usize,
    v: *const f32,
    stride: usize,
    out: [*mut f32; RR],
    hd: usize,
    first: [bool; RR],
) {
    let mut acc = [[[_mm512_setzero_ps(); CW]; G]; RR];
    for r in 0..RR {
        if !first[r] {
            for h in 0..G {
                for t in 0..CW {
                    acc[r][h][t] = _mm512_loadu_ps(out[r].add(h * hd + 16 * t));
                }
            }
        }
    }
    for j in 0..n {
        let vr = v.add(j * stride);
        for t in 0..CW {
            _mm_prefetch::<_MM_HINT_T0>(vr.wrapping_add(PF_ROWS * stride + 16 * t) as *const i8);
        }
        let vv: [__m512; CW] = std::array::from_fn(|t| _mm512_loadu_ps(vr.add(16 * t)));
        for r in 0..RR {
            for h in 0..G {
                let pv = _mm512_set1_ps(*p[r].add(h * hs + j));
                for t in 0..CW {
                    acc[r][h][t] = _mm512_fmadd_ps(pv, vv[t], acc[r][h][t]);
                }
            }
        }
    }
    for r in 0..RR {
        for h in 0..G {
            for t in 0..CW {
                _mm512_storeu_ps(out[r].add(h * hd + 16 * t), acc[r][h][t]);
            }
        }
    }
}

/// `scalar::softmax`, 16 lanes at a time (same max, exp, lane sums, scale).
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn softmax(s: &mut [f32]) {
    let n = s.len();
    let p = s.as_mut_ptr();
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 16 <= n {
        mx = _mm512_max_ps(mx, _mm512_loadu_ps(p.add(i)));
        i += 16;
    }
    let mut max = _mm512_reduce_max_ps(mx);
    for &v in &s[i..] {
        max = max.max(v);
    }
    let mv = _mm512_set1_ps(max);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 };
        let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), mv));
        _mm512_mask_storeu_ps(p.add(i), m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
        i += 16;
    }
    let inv = _mm512_set1_ps(1.0 / reduce16(acc));
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 };
        _mm512_mask_storeu_ps(p.add(i), m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(i)), inv));
        i += 16;
    }
}
