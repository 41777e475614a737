//! Times the packed matmul on random weights of a given type and shape for
//! several row counts: `cargo run --release --example matmul_bench -- Q8_0 262144 640 [THREADS]`
//! (2 threads by default). Prints the median of 9 runs and ns per record
//! (16 output columns x one 32-weight block) per thread, for 1, 2, 4, 8, 16
//! and 64 rows or the row counts in `SD_MS` (e.g. `SD_MS=1,8,9,17`).

use std::time::Instant;

use specdec_gguf::GgmlType;
use specdec_kernels::{isa, matmul, ActScratch, MatmulJob, PackedMatrix, Pool};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ty = match args.get(1).map(String::as_str).unwrap_or("Q8_0") {
        "Q5_0" => GgmlType::Q5_0,
        "Q4_K" => GgmlType::Q4_K,
        "Q6_K" => GgmlType::Q6_K,
        _ => GgmlType::Q8_0,
    };
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(262144);
    let k: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(640);
    let (blck, bs) = ty.block_geometry();
    let mut seed = 1u64;
    let mut data: Vec<u8> = (0..n * k / blck as usize * bs as usize)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    // keep f16 scales finite: clear the exponent's top bits of every byte pair start
    for b in data.chunks_exact_mut(bs as usize) {
        b[1] &= 0x3B;
        if matches!(ty, GgmlType::Q4_K) {
            b[3] &= 0x3B;
        }
        if matches!(ty, GgmlType::Q6_K) {
            b[209] &= 0x3B;
        }
    }
    let w = PackedMatrix::from_gguf(ty, &data, n, k).unwrap();
    let threads: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2);
    let pool = Pool::new(threads);
    let records = (n.div_ceil(16) * k.div_ceil(32)) as f64;
    let mut qa = ActScratch::default();
    println!("{ty} {n}x{k}, {:.1} MB packed, isa {:?}", w.bytes() as f64 / 1e6, isa());
    let mut base = 0.0;
    let ms: Vec<usize> = std::env::var("SD_MS")
        .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
        .unwrap_or(vec![1, 2, 4, 8, 16, 64]);
    for m in ms {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut out = vec![0f32; m * n];
        let mut times = vec![];
        for _ in 0..9 {
            let t = Instant::now();
            matmul(&pool, isa(), &x, m, &mut qa, &mut [MatmulJob { w: &w, out: &mut out }]);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let t = times[4];
        if m == 1 {
            base = t;
        }
        println!(
            "M={m:3}: {t:8.3} ms  [{:.2}x]  {:.1} GB/s  {:.1} ns/record/thread",
            t / base,
            w.bytes() as f64 / t / 1e6,
            t * 1e6 * threads as f64 / records
        );
    }
}
