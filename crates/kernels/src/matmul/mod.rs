//! Matrix multiplication `out[m x n] = x[m x k] * W^T` over packed weights.
//!
//! Invariant (batch invariance): a row's result depends only on that row and
//! the weights. Rows are never mixed in one accumulator, work is split over
//! output columns only, and the accumulation order over k is fixed.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod avx512_attention;
#[cfg(target_arch = "x86_64")]
pub mod avx512_attention_bf16;
pub mod scalar;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::act::{ActScratch, ActStyle, QuantActs};
use crate::ops::ArgmaxScan;
use crate::pack::{PackedKind, PackedMatrix};
use crate::pool::{Pool, SendPtr};

/// Instruction set the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C: packed matmul only; other ops use the scalar code.
    Avx2,
    Avx512Vnni,
}

/// Whether this CPU runs the AVX-512 kernels (whatever `SPECDEC_ISA` says).
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The best available ISA; `SPECDEC_ISA=scalar` or `avx2` caps it.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("SPECDEC_ISA").ok();
        if forced.as_deref() == Some("scalar") {
            return Isa::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if forced.as_deref() != Some("avx2") && avx512::available() {
                return Isa::Avx512Vnni;
            }
            if avx2::available() {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// How attention multiplies. Sums, softmax and outputs are f32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnMath {
    /// f32 fma throughout (`attend`).
    F32,
    /// Products of bf16-rounded queries, keys, probabilities and values, two
    /// per f32 lane in `vdpbf16ps` order (`scalar::attend_bf16`): twice the
    /// f32 fma rate where the CPU has AVX-512 BF16. Needs a head size that
    /// is a multiple of 32 (other shapes use `F32`).
    Bf16,
}

/// Whether this CPU runs the AVX-512 BF16 attention kernels.
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return avx512_attention_bf16::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// 0: not chosen yet, 1: F32, 2: Bf16.
static ATTN_MATH: AtomicU8 = AtomicU8::new(0);

/// The attention arithmetic of this process: `set_attn_math`'s choice, else
/// `SPECDEC_ATTN=f32|bf16`, else `Bf16` where the ISA is AVX-512 and the
/// CPU has BF16 (where it does not, `Bf16` would run the scalar kernel).
pub fn attn_math() -> AttnMath {
    match ATTN_MATH.load(Ordering::Relaxed) {
        1 => AttnMath::F32,
        2 => AttnMath::Bf16,
        _ => {
            let m = match std::env::var("SPECDEC_ATTN").ok().as_deref() {
                Some("f32") => AttnMath::F32,
                Some("bf16") => AttnMath::Bf16,
                _ if isa() == Isa::Avx512Vnni && bf16_available() => AttnMath::Bf16,
                _ => AttnMath::F32,
            };
            set_attn_math(m);
            m
        }
    }
}

/// Fixes the attention arithmetic for the rest of the process (tests that
/// compare with an f32 reference at tight tolerances; call before any pass).
pub fn set_attn_math(m: AttnMath) {
    ATTN_MATH.store(if m == AttnMath::F32 { 1 } else { 2 }, Ordering::Relaxed);
}

/// One matrix of a multi-matrix pass and where its m x n result goes.
pub struct MatmulJob<'a> {
    pub w: &'a PackedMatrix,
    pub out: &'a mut [f32],
}

/// Row count from which activations are quantized in parallel.
const PAR_QUANTIZE_ROWS: usize = 4;

/// Runs every job on the same activations in one parallel region.
/// `x` is m rows of k; `scratch` holds its quantized forms.
pub fn matmul(pool: &Pool, isa: Isa, x: &[f32], m: usize, scratch: &mut ActScratch, jobs: &mut [MatmulJob]) {
    let k = jobs.first().map(|j| j.w.k).unwrap_or(0);
    assert_eq!(x.len(), m * k, "activations are not {m}x{k}");
    let ws: Vec<&PackedMatrix> = jobs.iter().map(|j| j.w).collect();
    quantize_for(pool, isa, x, m, k, scratch, &ws);
    let outs: Vec<(&PackedMatrix, SendPtr)> = jobs
        .iter_mut()
        .map(|j| {
            assert_eq!(j.w.k, k, "all jobs share the input width");
            assert!(j.out.len() >= m * j.w.n, "output too small");
            (j.w, SendPtr(j.out.as_mut_ptr()))
        })
        .collect();
    run_jobs(pool, isa, x, m, scratch, &outs, None);
}

/// A gated feed-forward's input side: `gate = x wg`, `up = x wu`, then
/// `gate = act(gate) * up` (GELU or SiLU times the up projection). Each thread
/// applies `act` to the columns it has just computed, while they are in its
/// cache and with no second pass over the pool. `act` is elementwise, so
/// every value is the same as from `matmul` followed by `act` over whole rows.
#[allow(clippy::too_many_arguments)]
pub fn matmul_gated(
    pool: &Pool,
    isa: Isa,
    x: &[f32],
    m: usize,
    scratch: &mut ActScratch,
    (wg, wu): (&PackedMatrix, &PackedMatrix),
    gate: &mut [f32],
    up: &mut [f32],
    act: fn(&mut [f32], &[f32]),
) {
    let (k, n) = (wg.k, wg.n);
    assert!(wu.k == k && wu.n == n, "gate and up projections differ in shape");
    assert_eq!(x.len(), m * k, "activations are not {m}x{k}");
    assert!(gate.len() >= m * n && up.len() >= m * n, "output too small");
    quantize_for(pool, isa, x, m, k, scratch, &[wg, wu]);
    let (gp, upp) = (SendPtr(gate.as_mut_ptr()), SendPtr(up.as_mut_ptr()));
    let activate = |g0: usize, g1: usize| {
        let (c0, c1) = (g0 * 16, (g1 * 16).min(n));
        for r in 0..m {
            // SAFETY: columns c0..c1 of every row belong to this thread alone,
            // and both buffers hold m x n values.
            let (g, u) = unsafe {
                (
                    std::slice::from_raw_parts_mut(gp.get().add(r * n + c0), c1 - c0),
                    std::slice::from_raw_parts(upp.get().add(r * n + c0), c1 - c0),
                )
            };
            act(g, u);
        }
    };
    run_jobs(pool, isa, x, m, scratch, &[(wg, gp), (wu, upp)], Some(&activate));
}

/// One matrix into a fresh m x w.n buffer, never zeroed first (for logits:
/// zeroing 16 rows of a 262,144-word vocabulary costs more than a verify
/// pass's attention).
pub fn matmul_alloc(
    pool: &Pool,
    isa: Isa,
    x: &[f32],
    m: usize,
    scratch: &mut ActScratch,
    w: &PackedMatrix,
) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "activations are not {m}x{}", w.k);
    if m == 0 {
        return Vec::new();
    }
    let n = m * w.n;
    let mut out: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(n);
    // SAFETY: MaybeUninit needs no initialization.
    unsafe { out.set_len(n) };
    quantize_for(pool, isa, x, m, w.k, scratch, std::slice::from_ref(&w));
    run_jobs(pool, isa, x, m, scratch, &[(w, SendPtr(out.as_mut_ptr() as *mut f32))], None);
    let mut out = std::mem::ManuallyDrop::new(out);
    // SAFETY: every kernel writes every column of every row of its group
    // range, and the ranges cover all n columns; MaybeUninit<f32> has f32's layout.
    unsafe { Vec::from_raw_parts(out.as_mut_ptr() as *mut f32, n, out.capacity()) }
}

/// An elementwise operation on a chunk of one row's outputs (a logit
/// soft-cap) before `matmul_argmax` scans it.
pub type RowPost<'a> = &'a (dyn Fn(&mut [f32]) + Sync);

/// Bytes of outputs a thread computes between two argmax scans in
/// `matmul_argmax`: its chunk of every row stays in L2.
const ARGMAX_CHUNK_BYTES: usize = 256 << 10;

/// The index of each row's largest output of `x W^T` after the elementwise
/// `post` (a logit soft-cap), by `ops::argmax`'s rules, without the m x n
/// outputs ever reaching memory: each thread computes its columns a chunk at
/// a time into a small buffer and scans the chunk while it is in cache. A
/// greedy verify pass of the default model would otherwise write and read
/// back 1 MB of logits per row. The values scanned are `matmul_alloc`'s, bit
/// for bit (the same kernels; only where they write differs).
pub fn matmul_argmax(
    pool: &Pool,
    isa: Isa,
    x: &[f32],
    m: usize,
    scratch: &mut ActScratch,
    w: &PackedMatrix,
    post: Option<RowPost>,
) -> Vec<u32> {
    assert_eq!(x.len(), m * w.k, "activations are not {m}x{}", w.k);
    if m == 0 {
        return Vec::new();
    }
    quantize_for(pool, isa, x, m, w.k, scratch, std::slice::from_ref(&w));
    let scratch = &*scratch;
    let nt = pool.threads();
    let scans: Vec<std::sync::Mutex<Vec<ArgmaxScan>>> = (0..nt).map(|_| Default::default()).collect();
    let groups = (ARGMAX_CHUNK_BYTES / (m * 16 * 4)).clamp(1, w.n_groups().max(1));
    pool.run(&|t| {
        let (g0, g1) = (w.n_groups() * t / nt, w.n_groups() * (t + 1) / nt);
        let mut rows = vec![ArgmaxScan::default(); m];
        let ld = groups * 16;
        let mut buf = vec![0f32; m * ld];
        let qa = match w.act_style() {
            ActStyle::Q8_0 => &scratch.q8_0,
            ActStyle::Q8_K => &scratch.q8_k,
        };
        let mut c0 = g0;
        while c0 < g1 {
            let c1 = (c0 + groups).min(g1);
            let (col0, col1) = (c0 * 16, (c1 * 16).min(w.n));
            // The kernels write column `col` of row `r` at `out + r * ld + col`:
            // shifted back by `col0`, the chunk lands at the buffer's start.
            run_range(isa, w, x, m, qa, c0, c1, buf.as_mut_ptr().wrapping_sub(col0), ld);
            for (r, scan) in rows.iter_mut().enumerate() {
                let vals = &mut buf[r * ld..r * ld + (col1 - col0)];
                if let Some(f) = post {
                    f(vals);
                }
                scan.feed(col0, vals);
            }
            c0 = c1;
        }
        *scans[t].lock().unwrap_or_else(|e| e.into_inner()) = rows;
    });
    let mut scans = scans.into_iter().map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()));
    let mut best = scans.next().unwrap_or_default();
    best.resize(m, ArgmaxScan::default());
    for later in scans {
        for (b, l) in best.iter_mut().zip(&later) {
            b.merge(l);
        }
    }
    best.iter().map(|s| s.index() as u32).collect()
}

fn quantize_for(pool: &Pool, isa: Isa, x: &[f32], m: usize, k: usize, scratch: &mut ActScratch, ws: &[&PackedMatrix]) {
    let needs = |style| ws.iter().any(|w| w.kind != PackedKind::F32 && w.act_style() == style);
    // Quantizing a few rows costs less than waking the pool. The AVX-512
    // kernels read the tiled copy alone.
    let quantize = |qa: &mut QuantActs, style| {
        let pool = (m >= PAR_QUANTIZE_ROWS).then_some(pool);
        qa.quantize_par(pool, x, m, k, style, isa != Isa::Avx512Vnni)
    };
    if needs(ActStyle::Q8_0) {
        quantize(&mut scratch.q8_0, ActStyle::Q8_0);
    }
    if needs(ActStyle::Q8_K) {
        quantize(&mut scratch.q8_k, ActStyle::Q8_K);
    }
}

/// Every output column range of every job, split over the pool's threads.
/// Each job's output must cover m x w.n. `after(g0, g1)` runs on each thread
/// once its ranges are done, with its weight groups of the first job.
#[allow(clippy::too_many_arguments)]
fn run_jobs(
    pool: &Pool,
    isa: Isa,
    x: &[f32],
    m: usize,
    scratch: &ActScratch,
    outs: &[(&PackedMatrix, SendPtr)],
    after: Option<&(dyn Fn(usize, usize) + Sync)>,
) {
    let nt = pool.threads();
    let share = |w: &PackedMatrix, t: usize| (w.n_groups() * t / nt, w.n_groups() * (t + 1) / nt);
    pool.run(&|t| {
        for (w, out) in outs {
            let (g0, g1) = share(w, t);
            if g0 < g1 {
                let qa = match w.act_style() {
                    ActStyle::Q8_0 => &scratch.q8_0,
                    ActStyle::Q8_K => &scratch.q8_k,
                };
                run_range(isa, w, x, m, qa, g0, g1, out.get(), w.n);
            }
        }
        if let (Some(f), Some((w, _))) = (after, outs.first()) {
            let (g0, g1) = share(w, t);
            if g0 < g1 {
                f(g0, g1);
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn run_range(
    isa: Isa,
    w: &PackedMatrix,
    x: &[f32],
    m: usize,
    qa: &QuantActs,
    g0: usize,
    g1: usize,
    out: *mut f32,
    ld: usize,
) {
    match (isa, w.kind) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512Vnni is only chosen when available; out covers m x ld.
        (Isa::Avx512Vnni, PackedKind::F32) => unsafe { avx512::matmul_f32(w, x, m, g0, g1, out, ld) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, _) => unsafe { avx512::matmul_q(w, qa, g0, g1, out, ld) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only chosen when available.
        (Isa::Avx2, k) if k != PackedKind::F32 => unsafe { avx2::matmul_q(w, qa, g0, g1, out, ld) },
        // SAFETY: out covers m x ld (checked in `matmul`).
        (_, PackedKind::F32) => unsafe { scalar::matmul_f32(w, x, m, g0, g1, out, ld) },
        // SAFETY: as above.
        _ => unsafe { scalar::matmul_q(w, qa, g0, g1, out, ld) },
    }
}

/// f32 dot product with the same summation order on every ISA.
pub fn dot(isa: Isa, x: &[f32], y: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when available.
        Isa::Avx512Vnni => unsafe { avx512::dot_f32(x, y) },
        _ => scalar::dot_f32(x, y),
    }
}

/// y += a * x, with one rounding per element (fused) on every ISA.
pub fn axpy(isa: Isa, a: f32, x: &[f32], y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when available.
        Isa::Avx512Vnni => unsafe { avx512::axpy(a, x, y) },
        _ => {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = a.mul_add(xv, *yv);
            }
        }
    }
}

/// Attention of one query head over keys/values at rows `start..=end` of
/// `k`/`v` (row stride `stride`): softmax(q . k) weighted sum of v into `out`.
/// The same arithmetic whatever the batch, so rows stay batch-invariant.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    start: usize,
    end: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when available.
        Isa::Avx512Vnni => unsafe { avx512_attention::attend(q, k, v, stride, start, end, scores, out) },
        _ => attend_with(
            scalar::dot_f32,
            |a, x, y| axpy(isa, a, x, y),
            scalar::softmax,
            q,
            k,
            v,
            stride,
            start,
            end,
            scores,
            out,
        ),
    }
}

/// Heads per call of the AVX-512 attention kernels (which serve 1-4 heads
/// per key/value head) for a group of `g > 4`: its largest divisor up to 4.
#[cfg(target_arch = "x86_64")]
fn kernel_subgroup(g: usize) -> usize {
    (1..=4).rev().find(|s| g.is_multiple_of(*s)).unwrap_or(1)
}

/// `attend` for `g` query heads that share one key/value head: `q` and `out`
/// hold g heads of `hd` each. Equal bit for bit to g calls of `attend`.
#[allow(clippy::too_many_arguments)]
pub fn attend_heads(
    isa: Isa,
    g: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    start: usize,
    end: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len() / g.max(1);
    assert!(q.len() == g * hd && out.len() == g * hd, "q and out must hold {g} heads");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && hd.is_multiple_of(16) && g > 4 {
        // More heads per key/value head than the kernels' registers serve
        // (R1-Distill-Qwen: 6, 7). Each head's arithmetic is the same in any grouping.
        let sub = kernel_subgroup(g);
        for h0 in (0..g).step_by(sub) {
            let o = h0 * hd;
            let (qg, og) = (&q[o..o + sub * hd], &mut out[o..o + sub * hd]);
            attend_heads(isa, sub, qg, k, v, stride, start, end, scores, og);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && hd.is_multiple_of(16) && (1..=4).contains(&g) {
        // SAFETY: chosen only when available; shapes checked above and in the kernel.
        unsafe {
            match g {
                1 => avx512_attention::attend_heads::<1>(q, k, v, stride, start, end, scores, out),
                2 => avx512_attention::attend_heads::<2>(q, k, v, stride, start, end, scores, out),
                3 => avx512_attention::attend_heads::<3>(q, k, v, stride, start, end, scores, out),
                _ => avx512_attention::attend_heads::<4>(q, k, v, stride, start, end, scores, out),
            }
        }
        return;
    }
    for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        attend(isa, qh, k, v, stride, start, end, scores, oh);
    }
}

/// `attend_heads` for several query rows that share keys and values (one
/// sequence): row i has its `g` heads of `hd` at `q[i * qs..]`, attends keys
/// `ranges[i].0..=ranges[i].1` and writes `out[i * os..]`. Equal bit for bit to
/// one `attend_heads` call per row; faster for many rows (long prompts), as
/// the rows share each pass over the keys and values.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    isa: Isa,
    g: usize,
    hd: usize,
    q: &[f32],
    qs: usize,
    k: &[f32],
    v: &[f32],
    stride: usize,
    ranges: &[(usize, usize)],
    scores: &mut Vec<f32>,
    out: &mut [f32],
    os: usize,
) {
    let Some(rows) = ranges.len().checked_sub(1) else { return };
    assert!(
        q.len() >= rows * qs + g * hd && out.len() >= rows * os + g * hd,
        "q and out must hold {} rows of {g} heads",
        rows + 1
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && hd.is_multiple_of(16) && g > 4 {
        // As in `attend_heads`.
        let sub = kernel_subgroup(g);
        for h0 in (0..g).step_by(sub) {
            let o = h0 * hd;
            attend_rows(isa, sub, hd, &q[o..], qs, k, v, stride, ranges, scores, &mut out[o..], os);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && hd.is_multiple_of(16) && (1..=4).contains(&g) {
        // SAFETY: chosen only when available; shapes checked above and in the kernel.
        unsafe {
            match g {
                1 => avx512_attention::attend_rows::<1>(q, qs, hd, k, v, stride, ranges, scores, out, os),
                2 => avx512_attention::attend_rows::<2>(q, qs, hd, k, v, stride, ranges, scores, out, os),
                3 => avx512_attention::attend_rows::<3>(q, qs, hd, k, v, stride, ranges, scores, out, os),
                _ => avx512_attention::attend_rows::<4>(q, qs, hd, k, v, stride, ranges, scores, out, os),
            }
        }
        return;
    }
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let (qi, oi) = (&q[i * qs..][..g * hd], &mut out[i * os..][..g * hd]);
        attend_heads(isa, g, qi, k, v, stride, start, end, scores, oi);
    }
}

/// `attend_rows` in `AttnMath::Bf16`, over bf16 keys `k` (rows of `stride`)
/// and pair-interleaved values `v` (see `scalar::attend_bf16`): each row and
/// head equals `scalar::attend_bf16` bit for bit, on every ISA (the AVX-512
/// BF16 kernels where the CPU has them, else that scalar kernel). `hd` is a
/// multiple of 32.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_bf16(
    isa: Isa,
    g: usize,
    hd: usize,
    q: &[f32],
    qs: usize,
    k: &[u16],
    v: &[u16],
    stride: usize,
    ranges: &[(usize, usize)],
    scores: &mut Vec<f32>,
    out: &mut [f32],
    os: usize,
) {
    let Some(rows) = ranges.len().checked_sub(1) else { return };
    assert!(hd.is_multiple_of(32), "bf16 attention needs a head size that is a multiple of 32, not {hd}");
    assert!(
        q.len() >= rows * qs + g * hd && out.len() >= rows * os + g * hd,
        "q and out must hold {} rows of {g} heads",
        rows + 1
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && bf16_available() {
        if g > 4 {
            let sub = kernel_subgroup(g);
            for h0 in (0..g).step_by(sub) {
                let o = h0 * hd;
                attend_rows_bf16(isa, sub, hd, &q[o..], qs, k, v, stride, ranges, scores, &mut out[o..], os);
            }
            return;
        }
        // SAFETY: chosen only when available; shapes checked here and in the kernel.
        unsafe {
            use avx512_attention_bf16::attend_rows_bf16 as kernel;
            match g {
                1 => kernel::<1>(q, qs, hd, k, v, stride, ranges, scores, out, os),
                2 => kernel::<2>(q, qs, hd, k, v, stride, ranges, scores, out, os),
                3 => kernel::<3>(q, qs, hd, k, v, stride, ranges, scores, out, os),
                _ => kernel::<4>(q, qs, hd, k, v, stride, ranges, scores, out, os),
            }
        }
        return;
    }
    let _ = isa;
    for (i, &(start, end)) in ranges.iter().enumerate() {
        for h in 0..g {
            let (qh, oh) = (&q[i * qs + h * hd..][..hd], &mut out[i * os + h * hd..][..hd]);
            scalar::attend_bf16(qh, k, v, stride, start, end, scores, oh);
        }
    }
}

/// The attention arithmetic, given the ISA's dot product and axpy (both
/// back-ends share it, so they agree bit for bit).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn attend_with(
    dot: impl Fn(&[f32], &[f32]) -> f32,
    axpy: impl Fn(f32, &[f32], &mut [f32]),
    softmax: impl Fn(&mut [f32]),
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    start: usize,
    end: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    scores.clear();
    scores.extend((start..=end).map(|j| dot(q, &k[j * stride..j * stride + hd])));
    softmax(scores);
    out.fill(0.0);
    for (j, s) in (start..=end).zip(scores.iter()) {
        axpy(*s, &v[j * stride..j * stride + hd], out);
    }
}
