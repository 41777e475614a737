//! Times verify-shaped attention (profiling aid): R rows at the end of a
//! context of N positions (4 heads sharing one key/value head, head dim 256,
//! window W, bf16 cache) over 18 layers' separate caches, with 64 MB
//! streamed between layers so that keys and values come from memory as in a
//! real pass (COLD=0: from cache): `attn_verify N W R [COLD]`, one thread.
use std::time::Instant;

use specdec_kernels::{attend_rows_bf16, isa};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    if a.len() < 3 || !specdec_kernels::bf16_available() {
        eprintln!("usage: attn_verify N W R [COLD] (needs AVX-512 BF16)");
        return;
    }
    let (n, w, rows, cold) = (a[0], a[1], a[2], a.get(3).copied().unwrap_or(1));
    let (g, hd, layers) = (4, 256, 18);
    let mut seed = 1u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 2000) as f32 / 1000.0 - 1.0
    };
    let bits = specdec_kernels::matmul::scalar::bf16_bits;
    let kv: Vec<(Vec<u16>, Vec<u16>)> = (0..layers)
        .map(|_| {
            let k: Vec<u16> = (0..n * hd).map(|_| bits(rnd())).collect();
            let v: Vec<u16> = (0..n.next_multiple_of(2) * hd).map(|_| bits(rnd())).collect();
            (k, v)
        })
        .collect();
    let q: Vec<f32> = (0..rows * g * hd).map(|_| rnd() * 0.1).collect();
    let mut junk = vec![1u8; 64 << 20];
    let mut scores = Vec::new();
    let mut out = vec![0f32; rows * g * hd];
    let ranges: Vec<(usize, usize)> = (n - rows..n).map(|p| ((p + 1).saturating_sub(w), p)).collect();
    let mut times = Vec::new();
    for _ in 0..15 {
        let mut t = 0.0;
        for (k, v) in &kv {
            if cold == 1 {
                junk.chunks_mut(64).for_each(|c| c[0] = c[0].wrapping_add(1));
                std::hint::black_box(&junk);
            }
            let t0 = Instant::now();
            attend_rows_bf16(isa(), g, hd, &q, g * hd, k, v, hd, &ranges, &mut scores, &mut out, g * hd);
            t += t0.elapsed().as_secs_f64();
        }
        times.push(t);
    }
    times.sort_by(f64::total_cmp);
    let fma: f64 = ranges.iter().map(|r| (2 * g * hd * (r.1 + 1 - r.0)) as f64).sum::<f64>() * layers as f64;
    let t = times[7];
    println!(
        "n={n} w={w} rows={rows} cold={cold}: {:.3} ms for {layers} layers ({:.1} GFMA/s, median of 15)",
        t * 1e3,
        fma / t / 1e9
    );
}
