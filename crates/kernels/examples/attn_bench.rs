//! Times causal attention of n query rows (4 heads sharing one key/value
//! head, head dim 256, window w) on one thread, as a long prefill runs it:
//! `cargo run --release --example attn_bench -- 1500 512`: one row per call
//! (`attend_heads`) against blocks of 4, 8 and 16 rows (`attend_rows`), then
//! the same blocks in bf16 products (`attend_rows_bf16`, `AttnMath::Bf16`).
use std::time::Instant;

use specdec_kernels::{attend_heads, attend_rows, attend_rows_bf16, isa};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    let (n, w) = (a.first().copied().unwrap_or(1500), a.get(1).copied().unwrap_or(512));
    let (g, hd) = (4, 256);
    let mut seed = 1u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 2000) as f32 / 1000.0 - 1.0
    };
    let k: Vec<f32> = (0..n * hd).map(|_| rnd()).collect();
    let v: Vec<f32> = (0..n * hd).map(|_| rnd()).collect();
    let q: Vec<f32> = (0..n * g * hd).map(|_| rnd() * 0.1).collect();
    // The bf16 layout of `KvCache`: key rows, then value pairs interleaved.
    let bits = specdec_kernels::matmul::scalar::bf16_bits;
    let k16: Vec<u16> = k.iter().map(|&x| bits(x)).collect();
    let mut v16 = vec![0u16; n.next_multiple_of(2) * hd];
    for (j, row) in v.chunks_exact(hd).enumerate() {
        for (x, &val) in row.iter().enumerate() {
            v16[(j / 2) * 2 * hd + 2 * x + j % 2] = bits(val);
        }
    }
    let fma: f64 = (0..n).map(|i| (2 * g * hd * (i + 1 - (i + 1).saturating_sub(w))) as f64).sum();
    let isa = isa();
    let mut scores = Vec::new();
    let mut out = vec![0f32; n * g * hd];
    for (rows, bf16) in [(1usize, false), (4, false), (8, false), (16, false), (1, true), (8, true), (16, true)] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let mut i = 0;
            while i < n {
                let r = rows.min(n - i);
                let (qi, o) = (&q[i * g * hd..(i + r) * g * hd], &mut out[i * g * hd..(i + r) * g * hd]);
                if bf16 {
                    let ranges: Vec<(usize, usize)> = (i..i + r).map(|p| ((p + 1).saturating_sub(w), p)).collect();
                    attend_rows_bf16(isa, g, hd, qi, g * hd, &k16, &v16, hd, &ranges, &mut scores, o, g * hd);
                } else if rows == 1 {
                    attend_heads(isa, g, qi, &k, &v, hd, (i + 1).saturating_sub(w), i, &mut scores, o);
                } else {
                    let ranges: Vec<(usize, usize)> = (i..i + r).map(|p| ((p + 1).saturating_sub(w), p)).collect();
                    attend_rows(isa, g, hd, qi, g * hd, &k, &v, hd, &ranges, &mut scores, o, g * hd);
                }
                i += r;
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "n={n} w={w} rows per call {rows:2}{}: {:.1} ms ({:.1} GFMA/s, best of 5, one thread)",
            if bf16 { " bf16" } else { "" },
            best * 1e3,
            fma / best / 1e9
        );
    }
}
