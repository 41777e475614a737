//! AVX-512 BF16 attention (`AttnMath::Bf16`): the loop structure of
//! `avx512_attention::attend_rows`, with scores and value sums taken by
//! `vdpbf16ps` (two bf16 products per f32 lane, at twice the f32 fma rate)
//! straight from the cache's bf16 keys and pair-interleaved values (half the
//! bytes of f32, no conversion in the loops). Queries and probabilities are
//! rounded once per row. Every result equals `scalar::attend_bf16` bit for
//! bit.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx512_attention::{softmax, store_scores, walk, KEY_BLOCK, PF_ROWS};

/// Key and value rows are also prefetched this far ahead into L2: a
/// verify pass reads each layer's cache once, cold (the weights streamed
/// since evict it), and 16 rows ahead leave it waiting on memory. 128 rows
/// (64 KB of keys at Gemma 3's shapes) made passes at a 900-token context
/// 4-6 % faster at 1-8 rows (256: less); prompts are unchanged.
const PF_FAR_ROWS: usize = 128;

/// Whether this CPU has `vdpbf16ps` and `vcvtne2ps2bf16`.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512bf16") && super::avx512::available()
}

/// `scalar::attend_bf16` for the G heads of each row: row i has its heads at
/// `q[i * qs..]`, writes `out[i * os..]` and attends keys `ranges[i]`
/// (inclusive). `k` holds key rows of `stride` bf16, `v` pairs of rows
/// interleaved (`2 * stride` per pair). `hd` is a multiple of 32. `scores`
/// is scratch (scores, rounded queries and probabilities).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_rows_bf16<const G: usize>(
    q: &[f32],
    qs: usize,
    hd: usize,
    k: &[u16],
    v: &[u16],
    stride: usize,
    ranges: &[(usize, usize)],
    scores: &mut Vec<f32>,
    out: &mut [f32],
    os: usize,
) {
    match G {
        1 => rows_rr::<G, 4, 4>(q, qs, hd, k, v, stride, ranges, scores, out, os),
        2 => rows_rr::<G, 4, 2>(q, qs, hd, k, v, stride, ranges, scores, out, os),
        _ => rows_rr::<G, 2, 2>(q, qs, hd, k, v, stride, ranges, scores, out, os),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_rr<const G: usize, const RR: usize, const CW: usize>(
    q: &[f32],
    qs: usize,
    hd: usize,
    k: &[u16],
    v: &[u16],
    stride: usize,
    ranges: &[(usize, usize)],
    scores: &mut Vec<f32>,
    out: &mut [f32],
    os: usize,
) {
    let rows = ranges.len();
    assert!(rows > 0 && hd.is_multiple_of(32), "attend_rows_bf16: no rows, or head dim not a multiple of 32");
    assert!(q.len() >= (rows - 1) * qs + G * hd && out.len() >= (rows - 1) * os + G * hd, "q or out too short");
    for &(s, e) in ranges {
        assert!(s <= e && e * stride + hd <= k.len() && (e / 2) * 2 * stride + 2 * hd <= v.len(), "keys out of range");
    }
    let nmax = ranges.iter().map(|r| r.1 + 1 - r.0).max().unwrap_or(0);
    let npmax = ranges.iter().map(|r| r.1 / 2 + 1 - r.0 / 2).max().unwrap_or(0);
    // Scratch: scores (rows x G x nmax), queries in bf16 (two per f32 slot),
    // probabilities in bf16 by absolute position from the range's first even
    // one (two per slot, rows x G x npmax slots), zero outside the range.
    let (ns, nq) = (rows * G * nmax, rows * G * hd / 2);
    // Every slot read is written first (scores per row range, queries, the
    // probabilities and the zero halves of a range's edge pairs below), so
    // the scratch is only grown, never cleared (clearing it was a memset of
    // rows x heads x keys floats per call).
    if scores.len() < ns + nq + rows * G * npmax {
        scores.resize(ns + nq + rows * G * npmax, 0.0);
    }
    let sp = scores.as_mut_ptr();
    let qb = sp.add(ns) as *mut u16;
    let pb = sp.add(ns + nq) as *mut u32;
    for i in 0..rows {
        to_bf16(q.as_ptr().add(i * qs), G * hd, qb.add(i * G * hd));
    }
    let (kp, vp, op) = (k.as_ptr(), v.as_ptr(), out.as_mut_ptr());
    let score_of = |i: usize, j0: usize| sp.add(i * G * nmax + j0 - ranges[i].0);
    let q_of = |i: usize| qb.add(i * G * hd) as *const u16;
    walk(
        ranges,
        RR,
        KEY_BLOCK,
        &mut |i, j0, j1| score_keys::<G, 1, 4>([q_of(i)], hd, kp, stride, j0, j1, [score_of(i, j0)], nmax),
        &mut |gi, x0, x1| {
            let qr: [*const u16; RR] = std::array::from_fn(|r| q_of(gi * RR + r));
            let sr: [*mut f32; RR] = std::array::from_fn(|r| score_of(gi * RR + r, x0));
            score_keys::<G, RR, 2>(qr, hd, kp, stride, x0, x1, sr, nmax);
        },
    );
    // Softmax, then probabilities in bf16 pairs by absolute position (keys
    // of a pair outside the range weigh 0).
    for (i, &(s, e)) in ranges.iter().enumerate() {
        for h in 0..G {
            let at = (i * G + h) * nmax;
            softmax(&mut scores[at..at + e + 1 - s]);
            // Pairs from s/2 to e/2: the even half of the first pair is zero
            // when s is odd, the odd half of the last when e is even.
            let row = pb.add((i * G + h) * npmax) as *mut u16;
            *row = 0;
            *row.add(2 * (e / 2 - s / 2) + 1) = 0;
            to_bf16(sp.add(at), e + 1 - s, row.add(s % 2));
        }
    }
    // Values over pairs: the accumulators of a row wait in `out` between pieces.
    let pairs: Vec<(usize, usize)> = ranges.iter().map(|&(s, e)| (s / 2, e / 2)).collect();
    let p_of = |i: usize, m0: usize| pb.add(i * G * npmax + m0 - pairs[i].0) as *const u32;
    walk(
        &pairs,
        RR,
        KEY_BLOCK / 2,
        &mut |i, m0, m1| {
            let (p, vr, o) = ([p_of(i, m0)], vp.add(2 * m0 * stride), op.add(i * os));
            let (first, n) = ([m0 == pairs[i].0], m1 - m0);
            let mut c = 0;
            while c + 4 <= hd / 16 {
                sum_pairs::<G, 1, 4>(p, npmax, n, vr.add(32 * c), stride, [o.add(16 * c)], hd, first);
                c += 4;
            }
            while c < hd / 16 {
                sum_pairs::<G, 1, 1>(p, npmax, n, vr.add(32 * c), stride, [o.add(16 * c)], hd, first);
                c += 1;
            }
        },
        &mut |gi, m0, m1| {
            let pr: [*const u32; RR] = std::array::from_fn(|r| p_of(gi * RR + r, m0));
            let first: [bool; RR] = std::array::from_fn(|r| m0 == pairs[gi * RR + r].0);
            let mut c = 0;
            while c < hd / 16 {
                let or: [*mut f32; RR] = std::array::from_fn(|r| op.add((gi * RR + r) * os + 16 * c));
                let vr = vp.add(2 * m0 * stride + 32 * c);
                if c + CW <= hd / 16 {
                    sum_pairs::<G, RR, CW>(pr, npmax, m1 - m0, vr, stride, or, hd, first);
                    c += CW;
                } else {
                    sum_pairs::<G, RR, 1>(pr, npmax, m1 - m0, vr, stride, or, hd, first);
                    c += 1;
                }
            }
        },
    );
}

/// Scores of keys `j0..j1` for RR rows of G heads (`avx512_attention::
/// score_keys` with bf16 products): row r's rounded queries at `q[r]` (G x
/// hd bf16), key j's score for head h at `s[r][h * hs + j - j0]`. Per score:
/// one `vdpbf16ps` chain over the head's 32-value chunks, then `reduce16`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn score_keys<const G: usize, const RR: usize, const KK: usize>(
    q: [*const u16; RR],
    hd: usize,
    k: *const u16,
    stride: usize,
    j0: usize,
    j1: usize,
    s: [*mut f32; RR],
    hs: usize,
) {
    let (n, nc) = (j1 - j0, hd / 32);
    let mut j = 0;
    while j < n {
        let kr: [*const u16; KK] = std::array::from_fn(|t| k.add((j0 + (j + t).min(n - 1)) * stride));
        let mut a = [[[_mm512_setzero_ps(); G]; RR]; KK];
        for c in 0..nc {
            for t in 0..KK {
                _mm_prefetch::<_MM_HINT_T0>(kr[t].wrapping_add(PF_ROWS * stride + 32 * c) as *const i8);
                _mm_prefetch::<_MM_HINT_T1>(kr[t].wrapping_add(PF_FAR_ROWS * stride + 32 * c) as *const i8);
            }
            let kv: [__m512bh; KK] =
                std::array::from_fn(|t| std::mem::transmute(_mm512_loadu_si512(kr[t].add(32 * c) as *const _)));
            for r in 0..RR {
                for h in 0..G {
                    let qv: __m512bh = std::mem::transmute(_mm512_loadu_si512(q[r].add(h * hd + 32 * c) as *const _));
                    for t in 0..KK {
                        a[t][r][h] = _mm512_dpbf16_ps(a[t][r][h], qv, kv[t]);
                    }
                }
            }
        }
        store_scores(&a, s, hs, j, KK.min(n - j));
        j += KK;
    }
}

/// out[r][h][0..16*CW] (+)= the bf16 pair sums of pairs m < n: pair m's
/// values at `v[m * 2 * stride..]` (element 2i the even key's value i, 2i+1
/// the odd key's), its probabilities at `p[r][h * hs + m]` (even key low).
/// One `vdpbf16ps` adds odd key then even key per lane. Starts from zero
/// where `first[r]`, else from what `out[r]` holds.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn sum_pairs<const G: usize, const RR: usize, const CW: usize>(
    p: [*const u32; RR],
    hs: usize,
    n: usize,
    v: *const u16,
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
    for m in 0..n {
        let vr = v.add(2 * m * stride);
        for t in 0..CW {
            _mm_prefetch::<_MM_HINT_T0>(vr.wrapping_add(PF_ROWS * stride + 32 * t) as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(vr.wrapping_add(PF_FAR_ROWS * stride + 32 * t) as *const i8);
        }
        let vv: [__m512bh; CW] =
            std::array::from_fn(|t| std::mem::transmute(_mm512_loadu_si512(vr.add(32 * t) as *const _)));
        for r in 0..RR {
            for h in 0..G {
                let pv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*p[r].add(h * hs + m) as i32));
                for t in 0..CW {
                    acc[r][h][t] = _mm512_dpbf16_ps(acc[r][h][t], pv, vv[t]);
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

/// `dst[0..n] = bf16(src[0..n])` (`scalar::bf16_bits`: the same rounding).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16")]
#[inline]
unsafe fn to_bf16(src: *const f32, n: usize, dst: *mut u16) {
    let mut i = 0;
    while i < n {
        let m = (n - i).min(32);
        let lo: __mmask16 = if m >= 16 { 0xFFFF } else { (1u16 << m) - 1 };
        let hi: __mmask16 = if m >= 32 {
            0xFFFF
        } else if m > 16 {
            (1u16 << (m - 16)) - 1
        } else {
            0
        };
        let b = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src.add(i + 16)), _mm512_maskz_loadu_ps(lo, src.add(i)));
        let mask: __mmask32 = if m >= 32 { u32::MAX } else { (1u32 << m) - 1 };
        _mm512_mask_storeu_epi16(dst.add(i) as *mut i16, mask, std::mem::transmute::<__m512bh, __m512i>(b));
        i += 32;
    }
}
