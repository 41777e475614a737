//! Every packed kernel against the scalar reference, on random data.

use half::f16;
use specdec_gguf::GgmlType;
use specdec_kernels::matmul::{avx2, avx512, avx512_attention, scalar};
use specdec_kernels::quant::dequantize_row;
use specdec_kernels::{
    matmul, matmul_gated, ActScratch, ActStyle, Isa, MatmulJob, PackedKind, PackedMatrix, Pool, QuantActs,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Random blocks of `ty` with sane (finite, small) f16 scales.
fn random_matrix(ty: GgmlType, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let (blck, bs) = ty.block_geometry();
    let (blck, bs) = (blck as usize, bs as usize);
    let mut data: Vec<u8> = (0..n * k / blck * bs).map(|_| rng.next() as u8).collect();
    let f16_fields: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::F16 => &[0],
        GgmlType::F32 => &[],
        _ => panic!("no generator for {ty}"),
    };
    for blk in data.chunks_exact_mut(bs) {
        if ty == GgmlType::F32 {
            blk.copy_from_slice(&(rng.f() * 2.0 - 1.0).to_le_bytes());
        }
        for &o in f16_fields {
            let v = f16::from_f32((0.001 + 0.02 * rng.f()) * if ty == GgmlType::F16 { 50.0 } else { 1.0 });
            blk[o..o + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    data
}

fn random_acts(m: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    (0..m * k).map(|_| (rng.f() * 2.0 - 1.0) * 3.0).collect()
}

/// Reference: dequantized weights x dequantized int8 activations, in f64.
fn reference(ty: GgmlType, data: &[u8], n: usize, k: usize, x: &[f32], m: usize, quantize: bool) -> Vec<f64> {
    let style = match ty {
        GgmlType::Q4_K | GgmlType::Q6_K => ActStyle::Q8_K,
        _ => ActStyle::Q8_0,
    };
    let (blck, bs) = ty.block_geometry();
    let row_bytes = k / blck as usize * bs as usize;
    let mut wf = vec![0f32; n * k];
    for r in 0..n {
        dequantize_row(ty, &data[r * row_bytes..(r + 1) * row_bytes], &mut wf[r * k..(r + 1) * k]).unwrap();
    }
    let xa: Vec<f32> = if quantize {
        let mut qa = QuantActs::default();
        qa.quantize(x, m, k, style);
        (0..m * k).map(|i| qa.qs[i] as f32 * qa.d[i / 32]).collect()
    } else {
        x.to_vec()
    };
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|t| xa[i * k + t] as f64 * wf[j * k + t] as f64).sum();
        }
    }
    out
}

const TYPES: [GgmlType; 6] =
    [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_0, GgmlType::Q4_1];

#[test]
fn packed_kernels_match_dequantized_reference() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let pool = Pool::new(2);
    // n not a multiple of 16 exercises the partial last group.
    for ty in TYPES {
        for &(n, k, m) in &[(40usize, 256usize, 1usize), (37, 512, 5), (64, 256, 11)] {
            let data = random_matrix(ty, n, k, &mut rng);
            let x = random_acts(m, k, &mut rng);
            let w = PackedMatrix::from_gguf(ty, &data, n, k).unwrap();
            assert_ne!(w.kind, PackedKind::F32, "{ty} should have a packed kind");
            let want = reference(ty, &data, n, k, &x, m, true);
            let mut qa = ActScratch::default();
            for isa in isas() {
                let mut out = vec![f32::NAN; m * n];
                matmul(&pool, isa, &x, m, &mut qa, &mut [MatmulJob { w: &w, out: &mut out }]);
                let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
                assert!(scale > 0.0);
                for (i, (&g, &r)) in out.iter().zip(&want).enumerate() {
                    let err = (g as f64 - r).abs() / scale;
                    assert!(err < 2e-5, "{ty} {isa:?} n={n} k={k} m={m} idx {i}: got {g}, want {r}");
                }
            }
        }
    }
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if avx2::available() {
        v.push(Isa::Avx2);
    }
    if avx512::available() {
        v.push(Isa::Avx512Vnni);
    }
    v
}

#[test]
fn simd_equals_scalar_bit_for_bit_and_is_batch_invariant() {
    let simd_isas: Vec<Isa> = isas().into_iter().filter(|&i| i != Isa::Scalar).collect();
    assert!(!simd_isas.is_empty() || !cfg!(target_arch = "x86_64") || !avx2::available());
    let mut rng = Rng(12345);
    let pool = Pool::new(2);
    // 3 rows: quantized on one thread; 13: a full tile of 8 and a short one,
    // the threads' rows (7 and 6) cutting across the first tile; 70: ending
    // in a short tile.
    for (ty, m) in TYPES.into_iter().flat_map(|ty| [(ty, 3), (ty, 13), (ty, 70)]) {
        let (n, k) = (48, 512);
        let data = random_matrix(ty, n, k, &mut rng);
        let w = PackedMatrix::from_gguf(ty, &data, n, k).unwrap();
        let x = random_acts(m, k, &mut rng);
        let mut qa = ActScratch::default();
        let mut simd = vec![0f32; m * n];
        let mut sc = vec![0f32; m * n];
        matmul(&pool, Isa::Avx512Vnni, &x, m, &mut qa, &mut [MatmulJob { w: &w, out: &mut simd }]);
        matmul(&pool, Isa::Scalar, &x, m, &mut qa, &mut [MatmulJob { w: &w, out: &mut sc }]);
        assert_eq!(simd, sc, "{ty}, {m} rows: SIMD and scalar differ");
        for &isa in &simd_isas {
            let mut other = vec![0f32; m * n];
            matmul(&pool, isa, &x, m, &mut qa, &mut [MatmulJob { w: &w, out: &mut other }]);
            assert_eq!(other, sc, "{ty}: {isa:?} and scalar differ");
        }
        // Each row alone gives the same bits as inside the 13-row pass.
        for r in 0..m {
            let mut one = vec![0f32; n];
            matmul(
                &pool,
                Isa::Avx512Vnni,
                &x[r * k..(r + 1) * k],
                1,
                &mut qa,
                &mut [MatmulJob { w: &w, out: &mut one }],
            );
            assert_eq!(&one[..], &simd[r * n..(r + 1) * n], "{ty}: row {r} of {m} depends on the batch");
        }
    }
}

/// Passes of 57+ rows decode each L2-sized panel of weight groups once and
/// let every row tile read the decoded bytes (`avx512::matmul_q`); the sums
/// must stay those of the scalar kernel and of each row alone. 2048 inputs
/// make a panel 6 groups, so each thread's 20 groups end in a short one.
#[test]
fn prompt_sized_passes_through_decoded_panels_equal_scalar() {
    if !avx512::available() {
        return;
    }
    let mut rng = Rng(777);
    let pool = Pool::new(2);
    let (n, k, m) = (640, 2048, 70);
    for ty in TYPES {
        let data = random_matrix(ty, n, k, &mut rng);
        let w = PackedMatrix::from_gguf(ty, &data, n, k).unwrap();
        let x = random_acts(m, k, &mut rng);
        let mut qa = ActScratch::default();
        let (mut simd, mut sc) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
        matmul(&pool, Isa::Avx512Vnni, &x, m, &mut qa, &mut [MatmulJob { w: &w, out: &mut simd }]);
        matmul(&pool, Isa::Scalar, &x, m, &mut qa, &mut [MatmulJob { w: &w, out: &mut sc }]);
        assert!(sc.iter().any(|&v| v != 0.0));
        assert_eq!(simd, sc, "{ty}, {m} rows in panels: SIMD and scalar differ");
        for r in [0, 31, 69] {
            let mut one = vec![0f32; n];
            let xr = &x[r * k..(r + 1) * k];
            matmul(&pool, Isa::Avx512Vnni, xr, 1, &mut qa, &mut [MatmulJob { w: &w, out: &mut one }]);
            assert_eq!(&one[..], &simd[r * n..(r + 1) * n], "{ty}: row {r} of {m} depends on the batch");
        }
    }
}

#[test]
fn float_weights_use_the_exact_path() {
    let mut rng = Rng(777);
    let pool = Pool::new(2);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q5_1, GgmlType::Q5_K, GgmlType::Q2_K, GgmlType::Q3_K] {
        let (n, k, m) = (33, 256, 3);
        let data = random_matrix(ty, n, k, &mut rng);
        let w = PackedMatrix::from_gguf(ty, &data, n, k).unwrap();
        assert_eq!(w.kind, PackedKind::F32);
        let x = random_acts(m, k, &mut rng);
        let want = reference(ty, &data, n, k, &x, m, false);
        let mut qa = ActScratch::default();
        let mut results = vec![];
        for isa in isas() {
            let mut out = vec![0f32; m * n];
            matmul(&pool, isa, &x, m, &mut qa, &mut [MatmulJob { w: &w, out: &mut out }]);
            for (&g, &r) in out.iter().zip(&want) {
                assert!((g as f64 - r).abs() <= 1e-4 * r.abs().max(1.0), "{ty} {isa:?}: {g} vs {r}");
            }
            results.push(out);
        }
        assert!(results.windows(2).all(|p| p[0] == p[1]), "{ty}: ISAs disagree");
    }
}

#[test]
fn gated_matmul_equals_matmul_then_activation() {
    let mut rng = Rng(4242);
    let pool = Pool::new(2);
    // 70 columns: the threads' column ranges end inside a 16-column group.
    let (n, k) = (70, 512);
    for (ty, act) in [
        (GgmlType::Q5_0, specdec_kernels::ops::gelu_mul as fn(&mut [f32], &[f32])),
        (GgmlType::Q4_K, specdec_kernels::ops::silu_mul),
    ] {
        let wg = PackedMatrix::from_gguf(ty, &random_matrix(ty, n, k, &mut rng), n, k).unwrap();
        let wu = PackedMatrix::from_gguf(ty, &random_matrix(ty, n, k, &mut rng), n, k).unwrap();
        for m in [1, 5, 13] {
            let x = random_acts(m, k, &mut rng);
            for isa in isas() {
                let mut qa = ActScratch::default();
                let (mut g, mut u) = (vec![0f32; m * n], vec![0f32; m * n]);
                matmul(
                    &pool,
                    isa,
                    &x,
                    m,
                    &mut qa,
                    &mut [MatmulJob { w: &wg, out: &mut g }, MatmulJob { w: &wu, out: &mut u }],
                );
                act(&mut g, &u);
                let (mut g2, mut u2) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                matmul_gated(&pool, isa, &x, m, &mut qa, (&wg, &wu), &mut g2, &mut u2, act);
                assert_eq!(g, g2, "{ty} {isa:?}, {m} rows: gated output differs");
                assert_eq!(u, u2, "{ty} {isa:?}, {m} rows: up projection differs");
                assert!(g.iter().any(|&v| v != 0.0), "{ty}: all zero");
            }
        }
    }
}

#[test]
fn scalar_dot_matches_simd_dot() {
    let mut rng = Rng(99);
    for len in [1usize, 15, 16, 17, 64, 100, 256] {
        let x = random_acts(1, len, &mut rng);
        let y = random_acts(1, len, &mut rng);
        let s = scalar::dot_f32(&x, &y);
        if avx512::available() {
            assert_eq!(unsafe { avx512::dot_f32(&x, &y) }, s, "len {len}");
        }
        let exact: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((s as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()));
    }
}

/// Grouped attention (g heads sharing one key/value head) equals g calls of the
/// scalar per-head attention bit for bit on every ISA, and both match a float64
/// softmax reference.
#[test]
fn grouped_attention_equals_per_head_reference() {
    let mut rng = Rng(7);
    let (hd, kv_heads) = (32usize, 2usize);
    let stride = kv_heads * hd;
    for &(g, start, end) in
        &[(1usize, 0usize, 0usize), (2, 0, 6), (3, 2, 9), (4, 0, 40), (4, 17, 40), (5, 3, 12), (6, 1, 30), (7, 0, 20)]
    {
        let n_rows = end + 1;
        let k = random_acts(n_rows, stride, &mut rng);
        let v = random_acts(n_rows, stride, &mut rng);
        let q = random_acts(1, g * hd, &mut rng);
        let kvh = hd; // second key/value head
        let mut want = vec![0f32; g * hd];
        let mut scores = Vec::new();
        for h in 0..g {
            specdec_kernels::attend(
                Isa::Scalar,
                &q[h * hd..(h + 1) * hd],
                &k[kvh..],
                &v[kvh..],
                stride,
                start,
                end,
                &mut scores,
                &mut want[h * hd..(h + 1) * hd],
            );
            // float64 reference
            let s: Vec<f64> = (start..=end)
                .map(|j| (0..hd).map(|d| q[h * hd + d] as f64 * k[j * stride + kvh + d] as f64).sum())
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let r: f64 = (start..=end).map(|j| e[j - start] / z * v[j * stride + kvh + d] as f64).sum();
                assert!((want[h * hd + d] as f64 - r).abs() < 1e-4, "g {g} head {h} dim {d}");
            }
        }
        for isa in isas() {
            let mut got = vec![f32::NAN; g * hd];
            specdec_kernels::attend_heads(isa, g, &q, &k[kvh..], &v[kvh..], stride, start, end, &mut scores, &mut got);
            assert_eq!(got, want, "{isa:?} g {g} keys {start}..={end}");
        }
    }
}

/// Many query rows in one pass over the keys (`attend_rows`: causal, sliding
/// window, ranges across key blocks, padded row strides) equal one scalar
/// `attend_heads` call per row, bit for bit, on every ISA.
#[test]
fn attention_over_many_rows_equals_one_call_per_row() {
    let mut rng = Rng(11);
    let (hd, kv_heads, n_keys) = (32usize, 2usize, 400usize);
    let stride = kv_heads * hd;
    let k = random_acts(n_keys, stride, &mut rng);
    let v = random_acts(n_keys, stride, &mut rng);
    let kvh = hd; // second key/value head
    let cases: &[(usize, usize, usize, Option<usize>)] = &[
        (4, 8, 300, None),
        (4, 5, 390, Some(150)),
        (2, 16, 0, Some(7)),
        (1, 3, 128, None),
        (3, 7, 250, Some(200)),
        (5, 2, 60, None),
        (6, 4, 70, None),
        (7, 3, 140, Some(100)),
    ];
    for &(g, rows, first, window) in cases {
        let (qs, os) = (g * hd + 5, g * hd + 3);
        let q = random_acts(rows, qs, &mut rng);
        let ranges: Vec<(usize, usize)> =
            (first..first + rows).map(|pos| (window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos)).collect();
        let mut scores = Vec::new();
        let mut want = vec![f32::NAN; rows * os];
        for (i, &(s, e)) in ranges.iter().enumerate() {
            let (qi, wi) = (&q[i * qs..][..g * hd], &mut want[i * os..][..g * hd]);
            specdec_kernels::attend_heads(Isa::Scalar, g, qi, &k[kvh..], &v[kvh..], stride, s, e, &mut scores, wi);
        }
        for isa in isas() {
            let mut got = vec![f32::NAN; rows * os];
            let (kh, vh) = (&k[kvh..], &v[kvh..]);
            specdec_kernels::attend_rows(isa, g, hd, &q, qs, kh, vh, stride, &ranges, &mut scores, &mut got, os);
            for i in 0..rows {
                let bits = |x: &[f32]| x[i * os..][..g * hd].iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{isa:?} g {g} row {i} keys {:?}", ranges[i]);
            }
        }
    }
}

/// Keys as bf16 rows and values as bf16 pairs of rows interleaved (the
/// layout of `KvCache`'s bf16 copy), from f32 rows of `stride`.
fn bf16_cache(k: &[f32], v: &[f32], stride: usize) -> (Vec<u16>, Vec<u16>) {
    use specdec_kernels::matmul::scalar::bf16_bits;
    let rows = k.len() / stride;
    let k16: Vec<u16> = k.iter().map(|&x| bf16_bits(x)).collect();
    let mut v16 = vec![0u16; rows.next_multiple_of(2) * stride];
    for j in 0..rows {
        for x in 0..stride {
            v16[(j / 2) * 2 * stride + 2 * x + j % 2] = bf16_bits(v[j * stride + x]);
        }
    }
    (k16, v16)
}

/// bf16 attention (`AttnMath::Bf16`): the scalar kernel stays within bf16
/// rounding of an f64 reference, and `attend_rows_bf16` (the AVX-512 BF16
/// kernels where this CPU has them) equals one scalar `attend_bf16` call per
/// row and head bit for bit: causal and sliding ranges, odd and even starts
/// and ends, ranges across key blocks, padded strides, 1-7 heads; and a row
/// gives the same bits whatever the slot of the key after it holds.
#[test]
fn bf16_attention_rows_equal_the_scalar_kernel() {
    use specdec_kernels::matmul::scalar::{attend_bf16, bf16_round};
    let mut rng = Rng(23);
    let (hd, kv_heads, n_keys) = (64usize, 2usize, 401usize);
    let stride = kv_heads * hd;
    let k = random_acts(n_keys, stride, &mut rng);
    let v = random_acts(n_keys, stride, &mut rng);
    let (k16, mut v16) = bf16_cache(&k, &v, stride);
    let kvh = hd;
    let cases: &[(usize, usize, usize, Option<usize>)] = &[
        (4, 8, 300, None),
        (4, 5, 396, Some(151)),
        (2, 16, 0, Some(7)),
        (1, 3, 129, None),
        (3, 7, 250, Some(200)),
        (4, 2, 399, None),
        (6, 4, 70, None),
        (7, 3, 141, Some(100)),
        (4, 1, 400, Some(512)),
    ];
    let mut scores = Vec::new();
    for &(g, rows, first, window) in cases {
        let (qs, os) = (g * hd + 5, g * hd + 3);
        // Queries scaled so the softmax is not one-hot.
        let q: Vec<f32> = random_acts(rows, qs, &mut rng).iter().map(|x| x * 0.15).collect();
        let ranges: Vec<(usize, usize)> =
            (first..first + rows).map(|pos| (window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos)).collect();
        let (kh, vh) = (&k16[kvh..], &v16[2 * kvh..]);
        let mut want = vec![f32::NAN; rows * os];
        for (i, &(s, e)) in ranges.iter().enumerate() {
            for h in 0..g {
                let (qi, wi) = (&q[i * qs + h * hd..][..hd], &mut want[i * os + h * hd..][..hd]);
                attend_bf16(qi, kh, vh, stride, s, e, &mut scores, wi);
                // f64 reference with the same roundings of q, k and v.
                let bf = bf16_round;
                let sc: Vec<f64> = (s..=e)
                    .map(|j| (0..hd).map(|d| bf(qi[d]) as f64 * bf(k[j * stride + kvh + d]) as f64).sum())
                    .collect();
                let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                let ex: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = ex.iter().sum();
                for d in 0..hd {
                    let r: f64 = (s..=e).map(|j| ex[j - s] / z * bf(v[j * stride + kvh + d]) as f64).sum();
                    // Probabilities rounded to bf16 (2^-9 relative), values up to 3.
                    assert!((wi[d] as f64 - r).abs() < 1e-2, "g {g} row {i} head {h} dim {d}: {} vs {r}", wi[d]);
                }
            }
        }
        for isa in isas() {
            let mut got = vec![f32::NAN; rows * os];
            // Scratch left over from earlier calls (NaN in both bf16 halves)
            // must not leak into results.
            let mut junk = vec![f32::from_bits(0x7fc0_7fc0); 1 << 18];
            specdec_kernels::attend_rows_bf16(isa, g, hd, &q, qs, kh, vh, stride, &ranges, &mut junk, &mut got, os);
            for i in 0..rows {
                let bits = |x: &[f32]| x[i * os..][..g * hd].iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{isa:?} g {g} row {i} keys {:?}", ranges[i]);
            }
        }
    }
    // The last row (an even position) gives the same bits whatever its
    // pair's odd slot holds (stale values after a rollback, or zeros).
    let (s, e) = (200, 400);
    let q: Vec<f32> = random_acts(1, 4 * hd, &mut rng).iter().map(|x| x * 0.15).collect();
    let run = |v16: &[u16], isa| {
        let (mut out, mut scores) = (vec![0f32; 4 * hd], Vec::new());
        let (kh, vh) = (&k16[kvh..], &v16[2 * kvh..]);
        specdec_kernels::attend_rows_bf16(isa, 4, hd, &q, 0, kh, vh, stride, &[(s, e)], &mut scores, &mut out, 0);
        out
    };
    for isa in isas() {
        let before = run(&v16, isa);
        for x in 0..stride {
            v16[200 * 2 * stride + 2 * x + 1] = specdec_kernels::matmul::scalar::bf16_bits(rng.f() * 5.0 - 2.5);
        }
        assert_eq!(run(&v16, isa), before, "{isa:?}: a row depends on the slot after its last key");
    }
}

/// The scalar bf16 conversion is round-to-nearest-even with denormals to
/// zero: spot values, and (where the CPU has AVX-512 BF16) the hardware's
/// `vdpbf16ps` lane equals `dp_bf16_lane` on random values over the whole
/// exponent range, cancellations included.
#[test]
fn bf16_rounding_and_dot_lane_match_the_hardware() {
    use specdec_kernels::matmul::scalar::{bf16_bits, bf16_round};
    assert_eq!(bf16_bits(1.0), 0x3f80);
    assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
    assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
    assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
    assert_eq!(bf16_bits(-1e-40), 0x8000); // denormal to signed zero
    assert_eq!(bf16_bits(f32::MAX), 0x7f80); // rounds up to infinity
    assert_eq!(bf16_round(-2.5), -2.5);
    #[cfg(target_arch = "x86_64")]
    if specdec_kernels::bf16_available() {
        let mut rng = Rng(5);
        let mut bad = 0;
        for it in 0..20_000 {
            let e = [2, 10, 40, 70, 126][it % 5];
            let mut r = || (rng.f() * 2.0 - 1.0) * 2f32.powi((rng.next() % (2 * e as u64 + 1)) as i32 - e);
            let a: [f32; 32] = std::array::from_fn(|_| r());
            let mut b: [f32; 32] = std::array::from_fn(|_| r());
            let mut acc: [f32; 16] = std::array::from_fn(|_| r());
            if it % 7 == 0 {
                for i in 0..16 {
                    b[2 * i] = a[2 * i + 1];
                    acc[i] = -(bf16_round(a[2 * i + 1]) * bf16_round(b[2 * i + 1]))
                        - bf16_round(a[2 * i]) * bf16_round(b[2 * i]);
                }
            }
            let hw = unsafe { hw_dp(&acc, &a, &b) };
            for i in 0..16 {
                let (ae, be, ao, bo) = (a[2 * i], b[2 * i], a[2 * i + 1], b[2 * i + 1]);
                let sw = specdec_kernels::matmul::scalar::dp_bf16_lane(
                    acc[i],
                    bf16_round(ae),
                    bf16_round(be),
                    bf16_round(ao),
                    bf16_round(bo),
                );
                bad += (sw.to_bits() != hw[i].to_bits()) as usize;
            }
        }
        assert_eq!(bad, 0, "lanes where vdpbf16ps and dp_bf16_lane differ");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn hw_dp(acc: &[f32; 16], a: &[f32; 32], b: &[f32; 32]) -> [f32; 16] {
    use std::arch::x86_64::*;
    let ab = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(a.as_ptr().add(16)), _mm512_loadu_ps(a.as_ptr()));
    let bb = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(b.as_ptr().add(16)), _mm512_loadu_ps(b.as_ptr()));
    let mut o = [0f32; 16];
    _mm512_storeu_ps(o.as_mut_ptr(), _mm512_dpbf16_ps(_mm512_loadu_ps(acc.as_ptr()), ab, bb));
    o
}

/// The softmax exp is accurate (within 2 ulp-ish relative error against f64)
/// and the SIMD softmax equals the scalar one bit for bit, tails included.
#[test]
fn softmax_exp_is_accurate_and_identical_on_every_isa() {
    for i in 0..20_000 {
        let x = -90.0 + i as f32 * 0.0047;
        let got = scalar::exp_f32(x) as f64;
        let want = (x.max(-87.0) as f64).exp();
        assert!(((got - want) / want).abs() < 3e-7, "exp({x}) = {got}, want {want}");
    }
    let mut rng = Rng(5);
    for n in [1usize, 5, 16, 17, 100, 513] {
        let mut a: Vec<f32> = random_acts(1, n, &mut rng).iter().map(|v| v * 20.0).collect();
        let mut b = a.clone();
        scalar::softmax(&mut a);
        let total: f64 = a.iter().map(|&v| v as f64).sum();
        assert!((total - 1.0).abs() < 1e-5, "n {n}: sum {total}");
        if avx512::available() {
            unsafe { avx512_attention::softmax(&mut b) };
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "n {n}: SIMD softmax differs");
        }
    }
}

/// `matmul_argmax` finds what an argmax over `matmul_alloc`'s rows finds:
/// every packed type and ISA, row counts whose chunks split each thread's
/// columns several times (200 rows: 20 groups a chunk), a soft-cap as the
/// post-op, and every column twice (the matrix stacked on itself), so each
/// row's maximum ties with a copy further right and the first must win.
#[test]
fn argmax_matmul_equals_argmax_of_the_logits() {
    let mut rng = Rng(4242);
    let pool = Pool::new(2);
    let (n, k) = (16 * 45 + 7, 256);
    let cap = |v: &mut [f32]| v.iter_mut().for_each(|x| *x = (*x / 3.0).tanh() * 3.0);
    for ty in TYPES.into_iter().chain([GgmlType::F16]) {
        let half = random_matrix(ty, n, k, &mut rng);
        let data = [half.clone(), half].concat();
        let w = PackedMatrix::from_gguf(ty, &data, 2 * n, k).unwrap();
        for m in [1, 9, 200] {
            let x = random_acts(m, k, &mut rng);
            for isa in isas() {
                let mut qa = ActScratch::default();
                for post in [None, Some(&cap as specdec_kernels::RowPost)] {
                    let mut logits = specdec_kernels::matmul_alloc(&pool, isa, &x, m, &mut qa, &w);
                    if let Some(f) = post {
                        f(&mut logits);
                    }
                    let want: Vec<u32> =
                        logits.chunks_exact(2 * n).map(|r| specdec_kernels::ops::argmax(r) as u32).collect();
                    assert!(want.iter().all(|&i| (i as usize) < n), "{ty}: the first copy must win");
                    assert!(want.windows(2).any(|p| p[0] != p[1]) || m == 1, "{ty}: degenerate data");
                    let got = specdec_kernels::matmul_argmax(&pool, isa, &x, m, &mut qa, &w, post);
                    assert_eq!(got, want, "{ty} {isa:?} m {m} post {}", post.is_some());
                }
            }
        }
    }
}
