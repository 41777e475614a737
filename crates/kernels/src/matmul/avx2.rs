//! AVX2 kernels over the same packed layout (for CPUs without AVX-512 VNNI).
//!
//! A 64-byte chunk holds 16 rows; AVX2 takes it as two 32-byte halves of 8
//! rows. Without `vpdpbusd`, a 4-weight dot is `vpmaddubsw` (u8 x i8 pairs to
//! i16) then `vpmaddwd` with ones (pairs to i32). No pair can saturate: weights
//! of the 5- and 6-bit kinds are < 64, and 8-bit weights use the signed form
//! |w| x sign(a, w) with |w| <= 128, |a| <= 127. The integer block dots equal
//! the scalar reference's, and the float epilogue is the same, so results are
//! bit-identical to it.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::act::QuantActs;
use crate::pack::{PackedKind, PackedMatrix};

pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// # Safety
/// `available()` must be true; `out + r * ld + col` must be writable for
/// rows `r < a.m` and the columns `col` of groups `g0..g1` (`out` itself may
/// lie before the buffer, see `matmul_argmax`).
pub unsafe fn matmul_q(w: &PackedMatrix, a: &QuantActs, g0: usize, g1: usize, out: *mut f32, ld: usize) {
    let mut r0 = 0;
    while r0 < a.m {
        let mt = (a.m - r0).min(4);
        macro_rules! go {
            ($k:expr) => {
                match mt {
                    1 => tile::<$k, 1>(w, a, r0, g0, g1, out, ld),
                    2 => tile::<$k, 2>(w, a, r0, g0, g1, out, ld),
                    3 => tile::<$k, 3>(w, a, r0, g0, g1, out, ld),
                    _ => tile::<$k, 4>(w, a, r0, g0, g1, out, ld),
                }
            };
        }
        match w.kind {
            PackedKind::Q8S => go!(0),
            PackedKind::Q5S => go!(1),
            PackedKind::Q4A => go!(2),
            PackedKind::Q4K => go!(4),
            PackedKind::Q6K => go!(3),
            PackedKind::F32 => unreachable!(),
        }
        r0 += mt;
    }
}

#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// Unsigned values of chunk `j`, half `h` (rows 8h..8h+8) of a record.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn chunk<const KIND: u8>(rec: *const u8, j: usize, h: usize) -> __m256i {
    let ld = |o: usize| _mm256_loadu_si256(rec.add(o + 32 * h) as *const __m256i);
    match KIND {
        0 => ld(64 * j),
        _ => {
            let lo = _mm256_set1_epi8(0x0F);
            let n = ld(64 * (j % 4));
            let mut u = if j < 4 { _mm256_and_si256(n, lo) } else { _mm256_and_si256(_mm256_srli_epi16::<4>(n), lo) };
            if KIND == 1 {
                let hb = ld(256);
                // Byte t bit j of a lane is the fifth bit of weight 4j + t.
                let shifted = match j {
                    0 => _mm256_slli_epi32::<4>(hb),
                    1 => _mm256_slli_epi32::<3>(hb),
                    2 => _mm256_slli_epi32::<2>(hb),
                    3 => _mm256_slli_epi32::<1>(hb),
                    4 => hb,
                    5 => _mm256_srli_epi32::<1>(hb),
                    6 => _mm256_srli_epi32::<2>(hb),
                    _ => _mm256_srli_epi32::<3>(hb),
                };
                u = _mm256_or_si256(u, _mm256_and_si256(shifted, _mm256_set1_epi8(0x10)));
            }
            if KIND == 3 {
                // Byte t bits 2(j%4).. of a lane are the top bits of weight 4j + t.
                let hb = ld(256 + 64 * (j / 4));
                let shifted = match j % 4 {
                    0 => _mm256_slli_epi32::<4>(hb),
                    1 => _mm256_slli_epi32::<2>(hb),
                    2 => hb,
                    _ => _mm256_srli_epi32::<2>(hb),
                };
                u = _mm256_or_si256(u, _mm256_and_si256(shifted, _mm256_set1_epi8(0x30)));
            }
            u
        }
    }
}

/// Sum over 4-byte groups of u x a (i32 per lane), exact.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot4<const KIND: u8>(u: __m256i, a: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    if KIND == 0 {
        // Signed weights w = u - 128: |w| x sign(a, w).
        let w = _mm256_xor_si256(u, _mm256_set1_epi8(-128));
        _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w)), ones)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), ones)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const KIND: u8, const MT: usize>(
    w: &PackedMatrix,
    a: &QuantActs,
    r0: usize,
    g0: usize,
    g1: usize,
    out: *mut f32,
    ld: usize,
) {
    let nb = w.blocks();
    let rb = w.kind.record_bytes();
    let c = w.kind.offset();
    let base = w.q.as_slice().as_ptr();
    for g in g0..g1 {
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); MT];
            // Q4K/Q6K: the super-block's terms before d (and dmin), see scalar.rs.
            let (mut f, mut mn) = ([_mm256_setzero_ps(); MT], [_mm256_setzero_ps(); MT]);
            for b in 0..nb {
                let rec = base.add((g * nb + b) * rb);
                let mut ai = [_mm256_setzero_si256(); MT];
                let mut ai2 = [_mm256_setzero_si256(); MT];
                for j in 0..8 {
                    let u = chunk::<KIND>(rec, j, h);
                    for i in 0..MT {
                        let qa = a.qs.as_ptr().add((r0 + i) * a.k + b * 32 + 4 * j);
                        let d = dot4::<KIND>(u, bcast4(qa));
                        if KIND == 3 && j >= 4 {
                            ai2[i] = _mm256_add_epi32(ai2[i], d);
                        } else {
                            ai[i] = _mm256_add_epi32(ai[i], d);
                        }
                    }
                }
                for i in 0..MT {
                    let r = r0 + i;
                    let da = *a.d.get_unchecked(r * nb + b);
                    let s0 = *a.sum16.get_unchecked(r * 2 * nb + 2 * b);
                    let s1 = *a.sum16.get_unchecked(r * 2 * nb + 2 * b + 1);
                    let dav = _mm256_set1_ps(da);
                    match KIND {
                        0 | 1 => {
                            let so = if KIND == 0 { 512 } else { 320 };
                            let s = _mm256_cvtph_ps(_mm_loadu_si128(rec.add(so + 16 * h) as *const __m128i));
                            // Q8S already summed signed weights; Q5S needs -c * sum(a).
                            let tot = if KIND == 0 {
                                ai[i]
                            } else {
                                _mm256_add_epi32(ai[i], _mm256_set1_epi32(-c * (s0 + s1)))
                            };
                            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(s, dav), acc[i]);
                        }
                        2 => {
                            let s = _mm256_loadu_ps(rec.add(256 + 32 * h) as *const f32);
                            let m = _mm256_loadu_ps(rec.add(320 + 32 * h) as *const f32);
                            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ai[i]), _mm256_mul_ps(s, dav), acc[i]);
                            acc[i] = _mm256_fnmadd_ps(m, _mm256_set1_ps(da * (s0 + s1) as f32), acc[i]);
                        }
                        4 => {
                            let u8s = |o: usize| {
                                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                    _mm_loadl_epi64(rec.add(o + 8 * h) as *const _),
                                ))
                            };
                            f[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ai[i]), u8s(256), f[i]);
                            mn[i] = _mm256_fmadd_ps(u8s(272), _mm256_set1_ps(da * (s0 + s1) as f32), mn[i]);
                        }
                        _ => {
                            for (half, (sum, sh)) in [(ai[i], s0), (ai2[i], s1)].into_iter().enumerate() {
                                let sc = _mm_loadl_epi64(rec.add(384 + 16 * half + 8 * h) as *const _);
                                let tot = _mm256_add_epi32(sum, _mm256_set1_epi32(-c * sh));
                                f[i] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(tot),
                                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)),
                                    f[i],
                                );
                            }
                        }
                    }
                    if (KIND == 3 || KIND == 4) && (b % 8 == 7 || b == nb - 1) {
                        // The super-block's d (and dmin) once, as in the scalar kernel.
                        let sb = w.sb.as_ptr().add((g * nb.div_ceil(8) + b / 8) * w.sb_stride() + 8 * h);
                        acc[i] = _mm256_fmadd_ps(f[i], _mm256_mul_ps(_mm256_loadu_ps(sb), dav), acc[i]);
                        if KIND == 4 {
                            acc[i] = _mm256_fnmadd_ps(_mm256_loadu_ps(sb.add(16)), mn[i], acc[i]);
                        }
                        (f[i], mn[i]) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    }
                }
            }
            let col = g * 16 + 8 * h;
            if col >= w.n {
                continue;
            }
            let valid = (w.n - col).min(8);
            for (i, v) in acc.iter().enumerate() {
                let mut tmp = [0f32; 8];
                _mm256_storeu_ps(tmp.as_mut_ptr(), *v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), out.wrapping_add((r0 + i) * ld + col), valid);
            }
        }
    }
}
