//! AVX-512 VNNI kernels over the packed layout.
//!
//! Schedule: for each 16-row weight group, activation rows are taken in tiles
//! of up to 8; each record is decoded once per tile and reused by every row of
//! the tile, so weights stream from memory once per pass whatever the row count
//! (the verify shape). Records are prefetched ahead because the hardware
//! prefetchers alone do not reach full bandwidth on this access pattern.
//! Prompt-sized passes (8+ tiles) decode a panel of groups once into plain
//! bytes that every tile then reads (`predecode`).

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::act::{QuantActs, TILE};

// The row tiles below are dispatched for heights 1..=8.
const _: () = assert!(TILE == 8);
use crate::pack::{PackedKind, PackedMatrix};

const K_Q8S: u8 = 0;
const K_Q5S: u8 = 1;
const K_Q4A: u8 = 2;
const K_Q6K: u8 = 3;
const K_Q4K: u8 = 4;

/// Bytes ahead of the current record to prefetch.
const PREFETCH_AHEAD: usize = 16 * 1024;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

/// Bytes of weight groups processed together: every row tile passes over them
/// while they sit in L1, so weights stream from memory once per pass.
const CHUNK_BYTES: usize = 24 * 1024;

const fn record_bytes(kind: u8) -> usize {
    match kind {
        K_Q8S => 544,
        K_Q5S => 352,
        K_Q4A => 384,
        K_Q4K => 288,
        _ => 416,
    }
}

/// # Safety
/// `available()` must be true; `out + r * ld + col` must be writable for
/// rows `r < a.m` and the columns `col` of groups `g0..g1` (`out` itself may
/// lie before the buffer, see `matmul_argmax`).
pub unsafe fn matmul_q(w: &PackedMatrix, a: &QuantActs, g0: usize, g1: usize, out: *mut f32, ld: usize) {
    let kind = match w.kind {
        PackedKind::Q8S => K_Q8S,
        PackedKind::Q5S => K_Q5S,
        PackedKind::Q4A => K_Q4A,
        PackedKind::Q4K => K_Q4K,
        PackedKind::Q6K => K_Q6K,
        PackedKind::F32 => unreachable!(),
    };
    assert!(a.tiled.qs.len() == a.m * a.k && a.tiled.d.len() == a.m * w.blocks(), "activations not tiled");
    let nb = w.blocks();
    let gbytes = nb * record_bytes(kind);
    let tiles = a.m.div_ceil(TILE);
    // Every tile pass over a chunk prefetches its share of what lies ahead,
    // so memory stays busy while later tiles compute on cached weights.
    let mut pf = Prefetch {
        at: w.q.as_slice().as_ptr().wrapping_add(g0 * gbytes + PREFETCH_AHEAD),
        per_record: record_bytes(kind).div_ceil(tiles),
    };
    // Many row tiles (a prompt): chunks of groups sized for L2, every one
    // decoded once into plain bytes (`predecode`) that all tiles then load,
    // instead of decoding each record once per tile (a 784-token prefill of
    // the default model: 4 % faster; Q5_0 and Q6_K matrices alone 6-14 %).
    // Few tiles (decode and verify passes): chunks sized for L1, decoded in
    // place, as a second pass over decoded bytes would cost more than it saves.
    let many = tiles >= PANEL_TILES;
    let pre = many && kind != K_Q8S;
    let chunk = match (many, pre) {
        (false, _) => CHUNK_BYTES / gbytes,
        (true, false) => PANEL_BYTES / gbytes,
        (true, true) => PANEL_BYTES / (nb * DECODED_RECORD),
    }
    .max(1);
    thread_local! {
        /// Each thread's decoded panel, kept across calls.
        static PANEL: std::cell::RefCell<crate::pack::AlignedBytes> =
            std::cell::RefCell::new(crate::pack::AlignedBytes::default());
    }
    let mut panel = pre.then(|| {
        let p = PANEL.take();
        let need = chunk * nb * DECODED_RECORD;
        if p.as_slice().len() < need {
            crate::pack::AlignedBytes::zeroed(need)
        } else {
            p
        }
    });
    let dec = panel.as_mut().map_or(std::ptr::null_mut(), |p| p.as_mut_slice().as_mut_ptr());
    let mut c0 = g0;
    while c0 < g1 {
        let c1 = (c0 + chunk).min(g1);
        if pre {
            match kind {
                K_Q5S => predecode::<K_Q5S>(w, c0, c1, dec),
                K_Q4A => predecode::<K_Q4A>(w, c0, c1, dec),
                K_Q4K => predecode::<K_Q4K>(w, c0, c1, dec),
                _ => predecode::<K_Q6K>(w, c0, c1, dec),
            }
        }
        let mut r0 = 0;
        while r0 < a.m {
            let mt = (a.m - r0).min(TILE);
            macro_rules! go {
                ($k:expr, $d:expr) => {
                    match mt {
                        1 => tile::<$k, 1, $d>(w, a, r0, c0, c1, out, ld, &mut pf, dec),
                        2 => tile::<$k, 2, $d>(w, a, r0, c0, c1, out, ld, &mut pf, dec),
                        3 => tile::<$k, 3, $d>(w, a, r0, c0, c1, out, ld, &mut pf, dec),
                        4 => tile::<$k, 4, $d>(w, a, r0, c0, c1, out, ld, &mut pf, dec),
                        5 => tile::<$k, 5, $d>(w, a, r0, c0, c1, out, ld, &mut pf, dec),
                        6 => tile::<$k, 6, $d>(w, a, r0, c0, c1, out, ld, &mut pf, dec),
                        7 => tile::<$k, 7, $d>(w, a, r0, c0, c1, out, ld, &mut pf, dec),
                        _ => tile::<$k, 8, $d>(w, a, r0, c0, c1, out, ld, &mut pf, dec),
                    }
                };
            }
            match (kind, pre) {
                (K_Q8S, _) => go!(K_Q8S, false),
                (K_Q5S, false) => go!(K_Q5S, false),
                (K_Q4A, false) => go!(K_Q4A, false),
                (K_Q4K, false) => go!(K_Q4K, false),
                (_, false) => go!(K_Q6K, false),
                (K_Q5S, true) => go!(K_Q5S, true),
                (K_Q4A, true) => go!(K_Q4A, true),
                (K_Q4K, true) => go!(K_Q4K, true),
                (_, true) => go!(K_Q6K, true),
            }
            r0 += mt;
        }
        c0 = c1;
    }
    if let Some(p) = panel {
        PANEL.set(p);
    }
}

/// Row tiles from which `matmul_q` works in L2-sized panels (57+ rows:
/// prompts, not verify passes).
const PANEL_TILES: usize = 8;

/// Bytes of weights per panel.
const PANEL_BYTES: usize = 192 * 1024;

/// Bytes of a decoded record: eight 64-byte chunks of unsigned values.
const DECODED_RECORD: usize = 512;

/// The decoded chunks of every record of groups `g0..g1`, record after
/// record, at `dec` (`DECODED_RECORD` bytes each).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn predecode<const KIND: u8>(w: &PackedMatrix, g0: usize, g1: usize, dec: *mut u8) {
    let (nb, rb) = (w.blocks(), record_bytes(KIND));
    let base = w.q.as_slice().as_ptr();
    for r in 0..(g1 - g0) * nb {
        let u = decode::<KIND>(base.add(g0 * nb * rb + r * rb));
        for (j, v) in u.iter().enumerate() {
            _mm512_store_si512(dec.add(r * DECODED_RECORD + 64 * j) as *mut _, *v);
        }
    }
}

/// A cursor that runs ahead of the weights being read.
struct Prefetch {
    at: *const u8,
    /// Bytes to prefetch per record processed.
    per_record: usize,
}

impl Prefetch {
    #[inline(always)]
    unsafe fn step(&mut self) {
        let mut p = 0;
        while p < self.per_record {
            _mm_prefetch::<_MM_HINT_T1>(self.at.wrapping_add(p) as *const i8);
            p += 64;
        }
        self.at = self.at.wrapping_add(self.per_record);
    }
}

/// `p`, hidden from the optimiser so that it stays the base register of
/// `base + disp` operands instead of being folded into `base + index` ones.
#[inline(always)]
#[allow(clippy::pointers_in_nomem_asm_block)] // the block reads nothing: it only hides the value
fn opaque<T>(mut p: *const T) -> *const T {
    // SAFETY: an empty asm block that only claims to modify a register.
    unsafe { std::arch::asm!("/* {0} */", inout(reg) p, options(pure, nomem, nostack, preserves_flags)) };
    p
}

#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

/// Unsigned 8-bit values of the eight chunks of a record.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn decode<const KIND: u8>(rec: *const u8) -> [__m512i; 8] {
    let ld = |o: usize| _mm512_loadu_si512(rec.add(o) as *const _);
    match KIND {
        K_Q8S => [ld(0), ld(64), ld(128), ld(192), ld(256), ld(320), ld(384), ld(448)],
        _ => {
            let lo = _mm512_set1_epi8(0x0F);
            let n = [ld(0), ld(64), ld(128), ld(192)];
            let mut u = [
                _mm512_and_si512(n[0], lo),
                _mm512_and_si512(n[1], lo),
                _mm512_and_si512(n[2], lo),
                _mm512_and_si512(n[3], lo),
                _mm512_and_si512(_mm512_srli_epi16::<4>(n[0]), lo),
                _mm512_and_si512(_mm512_srli_epi16::<4>(n[1]), lo),
                _mm512_and_si512(_mm512_srli_epi16::<4>(n[2]), lo),
                _mm512_and_si512(_mm512_srli_epi16::<4>(n[3]), lo),
            ];
            if KIND == K_Q5S {
                let h = ld(256);
                let bit4 = _mm512_set1_epi8(0x10);
                let hs = [
                    _mm512_slli_epi32::<4>(h),
                    _mm512_slli_epi32::<3>(h),
                    _mm512_slli_epi32::<2>(h),
                    _mm512_slli_epi32::<1>(h),
                    h,
                    _mm512_srli_epi32::<1>(h),
                    _mm512_srli_epi32::<2>(h),
                    _mm512_srli_epi32::<3>(h),
                ];
                for j in 0..8 {
                    // u | (hs & 0x10)
                    u[j] = _mm512_ternarylogic_epi32::<0xF8>(u[j], hs[j], bit4);
                }
            }
            if KIND == K_Q6K {
                // Byte t bits 2(j%4).. of a lane are the top bits of weight 4j + t.
                let bits = _mm512_set1_epi8(0x30);
                for (v, h) in [ld(256), ld(320)].into_iter().enumerate() {
                    let hs = [_mm512_slli_epi32::<4>(h), _mm512_slli_epi32::<2>(h), h, _mm512_srli_epi32::<2>(h)];
                    for (t, x) in hs.into_iter().enumerate() {
                        // u | (hs & 0x30)
                        u[4 * v + t] = _mm512_ternarylogic_epi32::<0xF8>(u[4 * v + t], x, bits);
                    }
                }
            }
            u
        }
    }
}

/// Rows `r0..r0 + MT` times weight groups `g0..g1`.
///
/// Per row and 32-block the integer dot starts at the precomputed correction
/// (`-c * sum(a)`, see `QuantActs`), so the epilogue is three vector ops:
/// convert, scale (`s * d`), accumulate; everything else is a broadcast load.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const KIND: u8, const MT: usize, const DECODED: bool>(
    w: &PackedMatrix,
    a: &QuantActs,
    r0: usize,
    g0: usize,
    g1: usize,
    out: *mut f32,
    ld: usize,
    pf: &mut Prefetch,
    dec: *const u8,
) {
    let nb = w.blocks();
    let rb = record_bytes(KIND);
    let base = w.q.as_slice().as_ptr();
    let bc = |v: *const i32| _mm512_set1_epi32(*v);
    let bf = |v: *const f32| _mm512_set1_ps(*v);
    let nsb = nb.div_ceil(8);
    let t = &a.tiled;
    let tq = t.qs.as_ptr().add(r0 * a.k);
    let tw = r0 * nb;
    for g in g0..g1 {
        let mut acc = [_mm512_setzero_ps(); MT];
        // Q4K/Q6K: the super-block's dot x sc terms before d, see scalar.rs.
        let mut f = [_mm512_setzero_ps(); MT];
        let grec = base.add(g * nb * rb);
        let valid = (w.n - g * 16).min(16);
        let mask: __mmask16 = if valid == 16 { 0xFFFF } else { (1u16 << valid) - 1 };
        let (mut sbd, mut sbm) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for b in 0..nb {
            let rec = grec.add(b * rb);
            if (KIND == K_Q4K || KIND == K_Q6K) && b % 8 == 0 {
                // Super-block factors: d (Q4K and Q6K), then dmin (Q4K).
                let p = w.sb.as_ptr().add((g * nsb + b / 8) * w.sb_stride());
                sbd = _mm512_loadu_ps(p);
                if KIND == K_Q4K {
                    sbm = _mm512_loadu_ps(p.add(16));
                }
            }
            pf.step();
            // From a decoded panel each chunk is loaded where it is used,
            // leaving the registers to the accumulators (Q4_K, Q6_K: 1-3 %).
            let d = if DECODED { opaque(dec.wrapping_add(((g - g0) * nb + b) * DECODED_RECORD)) } else { dec };
            let u = if DECODED { [_mm512_setzero_si512(); 8] } else { decode::<KIND>(rec) };
            let uj = |j: usize| if DECODED { _mm512_load_si512(d.add(64 * j) as *const _) } else { u[j] };
            // This record's activations and per-block words for the tile's
            // rows, at constant offsets (see `act::Tiled`).
            let wb = tw + b * MT;
            let qb = opaque(tq.add(b * MT * 32));
            let (dp, sp) = (opaque(t.d.as_ptr().add(wb)), opaque(t.dsum.as_ptr().add(wb)));
            let mut qp = [std::ptr::null::<i8>(); MT];
            let mut ai = [_mm512_setzero_si512(); MT];
            let mut ai2 = [_mm512_setzero_si512(); MT];
            for i in 0..MT {
                qp[i] = qb.add(i * 32);
                match KIND {
                    K_Q8S => ai[i] = bc(t.corr128.as_ptr().add(wb + i)),
                    K_Q5S => ai[i] = bc(t.corr16.as_ptr().add(wb + i)),
                    K_Q6K => {
                        ai[i] = bc(t.corr32.as_ptr().add(2 * (wb + i)));
                        ai2[i] = bc(t.corr32.as_ptr().add(2 * (wb + i) + 1));
                    }
                    _ => {}
                }
            }
            // Chunks outer, rows inner, so the MT dependency chains interleave.
            for j in 0..4 {
                let w = uj(j);
                for i in 0..MT {
                    ai[i] = _mm512_dpbusd_epi32(ai[i], w, bcast4(qp[i].add(4 * j)));
                }
            }
            // A second chain per row (chunks 4..7) halves the vpdpbusd
            // latency chain (~7 % faster at 8 rows on 8960 x 1536 Q4_K); Q6K
            // needs it for its two half-block scales anyway. The sums are exact
            // integers, so the result equals the scalar reference.
            for j in 4..8 {
                let w = uj(j);
                for i in 0..MT {
                    ai2[i] = _mm512_dpbusd_epi32(ai2[i], w, bcast4(qp[i].add(4 * j)));
                }
            }
            match KIND {
                K_Q8S | K_Q5S => {
                    let so = if KIND == K_Q8S { 512 } else { 320 };
                    let s = _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(so) as *const _));
                    for i in 0..MT {
                        let da = bf(dp.add(i));
                        let tot = _mm512_add_epi32(ai[i], ai2[i]);
                        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_mul_ps(s, da), acc[i]);
                    }
                }
                K_Q4A => {
                    let s = _mm512_loadu_ps(rec.add(256) as *const f32);
                    let m = _mm512_loadu_ps(rec.add(320) as *const f32);
                    for i in 0..MT {
                        let da = bf(dp.add(i));
                        let tot = _mm512_add_epi32(ai[i], ai2[i]);
                        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_mul_ps(s, da), acc[i]);
                        acc[i] = _mm512_fnmadd_ps(m, bf(sp.add(i)), acc[i]);
                    }
                }
                K_Q4K => {
                    let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(rec.add(256) as *const _)));
                    for i in 0..MT {
                        let tot = _mm512_add_epi32(ai[i], ai2[i]);
                        f[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), sc, f[i]);
                    }
                }
                _ => {
                    let sc =
                        |o: usize| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(rec.add(o) as *const _)));
                    let (s0v, s1v) = (sc(384), sc(400));
                    for i in 0..MT {
                        f[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[i]), s0v, f[i]);
                        f[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai2[i]), s1v, f[i]);
                    }
                }
            }
            if (KIND == K_Q4K || KIND == K_Q6K) && (b % 8 == 7 || b == nb - 1) {
                // The super-block's d (and dmin) once, as in the scalar kernel,
                // into the output row (registers are short here: the sums of
                // the finished super-blocks wait in memory).
                let b0 = b - b % 8;
                let mut acc = [_mm512_setzero_ps(); MT];
                for i in 0..MT {
                    if b0 > 0 {
                        acc[i] = _mm512_maskz_loadu_ps(mask, out.wrapping_add((r0 + i) * ld + g * 16));
                    }
                    acc[i] = _mm512_fmadd_ps(f[i], _mm512_mul_ps(sbd, bf(t.d.as_ptr().add(tw + b * MT + i))), acc[i]);
                    f[i] = _mm512_setzero_ps();
                }
                if KIND == K_Q4K {
                    // sum of mq x d_a sum(a) over the super-block's blocks, in order
                    let mut mn = [_mm512_setzero_ps(); MT];
                    for bb in b0..=b {
                        let mq = _mm_loadu_si128(grec.add(bb * rb + 272) as *const _);
                        let mq = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mq));
                        for i in 0..MT {
                            mn[i] = _mm512_fmadd_ps(mq, bf(t.dsum.as_ptr().add(tw + bb * MT + i)), mn[i]);
                        }
                    }
                    for i in 0..MT {
                        acc[i] = _mm512_fnmadd_ps(sbm, mn[i], acc[i]);
                    }
                }
                for i in 0..MT {
                    _mm512_mask_storeu_ps(out.wrapping_add((r0 + i) * ld + g * 16), mask, acc[i]);
                }
            }
        }
        if KIND == K_Q4K || KIND == K_Q6K {
            continue;
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.wrapping_add((r0 + i) * ld + g * 16), mask, *acc);
        }
    }
}

/// Sums 16 lanes as `scalar::reduce16` does (8+8, 4+4, 2+2, 1+1).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn reduce16(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm512_extractf32x8_ps::<1>(v);
    let s8 = _mm256_add_ps(lo, hi);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
    _mm_cvtss_f32(s1)
}

#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(x.as_ptr().add(i)), _mm512_loadu_ps(y.as_ptr().add(i)), acc);
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = (1u16 << (n - i)) - 1;
        let xv = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
        let yv = _mm512_maskz_loadu_ps(mask, y.as_ptr().add(i));
        acc = _mm512_mask3_fmadd_ps(xv, yv, acc, mask);
    }
    reduce16(acc)
}

/// # Safety
/// `available()` must be true; `out + r * ld + col` must be writable for
/// rows `r < m` and the columns `col` of groups `g0..g1`.
pub unsafe fn matmul_f32(w: &PackedMatrix, x: &[f32], m: usize, g0: usize, g1: usize, out: *mut f32, ld: usize) {
    let k = w.k;
    for col in g0 * 16..(g1 * 16).min(w.n) {
        let wr = &w.f[col * k..(col + 1) * k];
        for r in 0..m {
            *out.wrapping_add(r * ld + col) = dot_f32(&x[r * k..(r + 1) * k], wr);
        }
    }
}

/// y += a * x.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm512_set1_ps(a);
    let mut i = 0;
    while i + 16 <= n {
        let yp = y.as_mut_ptr().add(i);
        _mm512_storeu_ps(yp, _mm512_fmadd_ps(av, _mm512_loadu_ps(x.as_ptr().add(i)), _mm512_loadu_ps(yp)));
        i += 16;
    }
    while i < n {
        y[i] = a.mul_add(x[i], y[i]);
        i += 1;
    }
}

/// `ops::rmsnorm` with the sum of squares in four 8-lane f64 chains, the
/// same sums in the same order as `ops::sum_squares`.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn rmsnorm(x: &mut [f32], w: &[f32], eps: f32) {
    use crate::ops::SQ_LANES;
    let n = x.len();
    let p = x.as_ptr();
    let mut acc = [_mm512_setzero_pd(); 4];
    let mut i = 0;
    while i + SQ_LANES <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let v = _mm512_cvtps_pd(_mm256_loadu_ps(p.add(i + 8 * j)));
            *a = _mm512_fmadd_pd(v, v, *a);
        }
        i += SQ_LANES;
    }
    let t = _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3]));
    let u = _mm256_add_pd(_mm512_castpd512_pd256(t), _mm512_extractf64x4_pd::<1>(t));
    let v = _mm_add_pd(_mm256_castpd256_pd128(u), _mm256_extractf128_pd::<1>(u));
    let mut total = _mm_cvtsd_f64(v) + _mm_cvtsd_f64(_mm_unpackhi_pd(v, v));
    for &r in &x[i..] {
        total += (r as f64) * (r as f64);
    }
    let scale = 1.0 / ((total / n as f64) as f32 + eps).sqrt();
    let sv = _mm512_set1_ps(scale);
    let m = n.min(w.len());
    let (xp, wp) = (x.as_mut_ptr(), w.as_ptr());
    let mut i = 0;
    while i < m {
        let k: __mmask16 = if m - i >= 16 { 0xFFFF } else { (1u16 << (m - i)) - 1 };
        let y =
            _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, xp.add(i)), sv), _mm512_maskz_loadu_ps(k, wp.add(i)));
        _mm512_mask_storeu_ps(xp.add(i), k, y);
        i += 16;
    }
}

/// Q8_0-style quantization of the 32-block at `x` into `q` (32 bytes, one
/// store); returns amax and the sums of the two 16-halves. The values go
/// straight to their destination and the sums stay in registers: staging
/// them in narrower stores and reloading them stalled store forwarding.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
#[inline]
pub unsafe fn quantize32_q8_0(x: *const f32, q: *mut i8) -> (f32, i32, i32) {
    let a = _mm512_loadu_ps(x);
    let b = _mm512_loadu_ps(x.add(16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let idv = _mm512_set1_ps(id);
    let qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, idv));
    let qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, idv));
    store32(q, qa, qb);
    (amax, _mm512_reduce_add_epi32(qa), _mm512_reduce_add_epi32(qb))
}

/// Q8_K-style quantization of 32 values of a 256-block with the block's
/// `iscale`, into `q` (one store); returns the sums of the two 16-halves.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub unsafe fn quantize32_q8_k(x: *const f32, iscale: f32, q: *mut i8) -> (i32, i32) {
    let isv = _mm512_set1_ps(iscale);
    let (lo, hi) = (_mm512_set1_epi32(-128), _mm512_set1_epi32(127));
    // Clamp like the scalar path (min 127, then saturating cast).
    let cv = |v: __m512| _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, isv)), hi), lo);
    let qa = cv(_mm512_loadu_ps(x));
    let qb = cv(_mm512_loadu_ps(x.add(16)));
    store32(q, qa, qb);
    (_mm512_reduce_add_epi32(qa), _mm512_reduce_add_epi32(qb))
}

/// The low bytes of 32 int32 lanes at `q`, in one 256-bit store.
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn store32(q: *mut i8, qa: __m512i, qb: __m512i) {
    let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(qa)), _mm512_cvtepi32_epi8(qb));
    _mm256_storeu_si256(q as *mut __m256i, v);
}

/// The largest |v| of `x` and the first value that has it (a Q8_K block's
/// signed max); `(0, 0)` for an all-zero block. Same answer as the scalar scan.
#[target_feature(enable = "avx512f,avx512dq")]
pub unsafe fn signed_absmax(x: &[f32]) -> (f32, f32) {
    // Four chains (max is exact, so their order does not matter). `vmaxps`
    // returns its second operand when either is NaN: a NaN never wins, as
    // in the scalar scan.
    let mut m = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= x.len() {
        for (j, m) in m.iter_mut().enumerate() {
            *m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x.as_ptr().add(i + 16 * j))), *m);
        }
        i += 64;
    }
    while i + 16 <= x.len() {
        m[0] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x.as_ptr().add(i))), m[0]);
        i += 16;
    }
    let mut amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3])));
    for &v in &x[i..] {
        amax = amax.max(v.abs());
    }
    if amax == 0.0 || amax.is_nan() {
        return crate::act::signed_absmax_scalar(x);
    }
    // The first element of that magnitude, 16 at a time (a scalar scan
    // cost four times the max itself).
    let av = _mm512_set1_ps(amax);
    let mut i = 0;
    while i + 16 <= x.len() {
        let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(_mm512_loadu_ps(x.as_ptr().add(i))), av);
        if hit != 0 {
            return (amax, x[i + hit.trailing_zeros() as usize]);
        }
        i += 16;
    }
    let first = i + x[i..].iter().position(|v| v.abs() == amax).unwrap_or(0);
    (amax, x[first.min(x.len() - 1)])
}

/// g = gelu(g) * u with ggml's f16-table GELU (`table` maps f16 bits to the
/// f32 value of the table entry).
#[target_feature(enable = "avx512f,f16c")]
pub unsafe fn gelu_mul(g: &mut [f32], u: &[f32], table: &[f32]) {
    let n = g.len().min(u.len());
    let (lo, hi) = (_mm512_set1_ps(-10.0), _mm512_set1_ps(10.0));
    let mut i = 0;
    while i + 16 <= n {
        let x = _mm512_loadu_ps(g.as_ptr().add(i));
        let h = _mm512_cvtepu16_epi32(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
        let t = _mm512_i32gather_ps::<4>(h, table.as_ptr());
        let is_lo = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, lo);
        let is_hi = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, hi);
        let r = _mm512_mask_blend_ps(is_hi, t, x);
        let r = _mm512_maskz_mov_ps(!is_lo, r);
        _mm512_storeu_ps(g.as_mut_ptr().add(i), _mm512_mul_ps(r, _mm512_loadu_ps(u.as_ptr().add(i))));
        i += 16;
    }
    for j in i..n {
        g[j] = crate::ops::gelu(g[j]) * u[j];
    }
}

/// `scalar::exp_f32` on 16 lanes, operation for operation.
#[target_feature(enable = "avx512f,fma")]
#[inline]
pub(super) unsafe fn exp16(x: __m512) -> __m512 {
    use super::scalar::{EXP_P, LN2_HI, LN2_LO, LOG2E};
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(LOG2E),
    ));
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
    let z = _mm512_mul_ps(r, r);
    let mut y = _mm512_set1_ps(EXP_P[0]);
    for &c in &EXP_P[1..] {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(y, z, r), _mm512_set1_ps(1.0));
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
    _mm512_mul_ps(y, _mm512_castsi512_ps(e))
}

/// g = silu(g) * u as `ops::silu_mul_scalar` computes it, operation for
/// operation (`exp16` for `exp_f32`, a true division), 16 lanes at a time.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 };
        let x = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
        let e = exp16(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN))));
        let s = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(g.as_mut_ptr().add(i), m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u.as_ptr().add(i))));
        i += 16;
    }
}

/// `ops::argmax_scalar`'s answer (the first index of the largest value, NaNs
/// never winning) in two passes: the largest non-NaN value, then where it
/// first occurs. `vmaxps` returns its second operand when either is NaN.
#[target_feature(enable = "avx512f")]
pub unsafe fn argmax(x: &[f32]) -> usize {
    let n = x.len();
    if n == 0 || x[0].is_nan() {
        return 0;
    }
    let p = x.as_ptr();
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 16 <= n {
        m = _mm512_max_ps(_mm512_loadu_ps(p.add(i)), m);
        i += 16;
    }
    let mut max = _mm512_reduce_max_ps(m);
    for &v in &x[i..] {
        if v > max {
            max = v;
        }
    }
    let mv = _mm512_set1_ps(max);
    let mut i = 0;
    while i + 16 <= n {
        let hit = _mm512_cmpeq_ps_mask(_mm512_loadu_ps(p.add(i)), mv);
        if hit != 0 {
            return i + hit.trailing_zeros() as usize;
        }
        i += 16;
    }
    i + x[i..].iter().position(|&v| v == max).unwrap_or(0)
}
