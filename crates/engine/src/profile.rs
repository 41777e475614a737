//! `specdec profile`: memory bandwidth, decode, prefill and verify-pass timings
//! measured side by side in one process.

use std::time::Instant;

use specdec_kernels::Pool;

use crate::{EngineError, LogitRows, Model};

/// Read bandwidth (GB/s) of a `bytes`-sized buffer swept by `pool`'s threads:
/// the best of `reps` sweeps.
pub fn read_bandwidth_gbps(pool: &Pool, bytes: usize, reps: usize) -> f64 {
    let n = bytes / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let nt = pool.threads();
    let mut best = f64::MAX;
    let sink = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..reps {
        let t = Instant::now();
        pool.run(&|tid| {
            let part = &buf[n * tid / nt..n * (tid + 1) / nt];
            // Eight independent lanes let the compiler vectorise the sweep.
            let mut acc = [0u64; 8];
            for c in part.chunks_exact(8) {
                for i in 0..8 {
                    acc[i] = acc[i].wrapping_add(c[i]);
                }
            }
            sink.fetch_add(acc.iter().fold(0, |a, &b| a ^ b), std::sync::atomic::Ordering::Relaxed);
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
    bytes as f64 / best / 1e9
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Milliseconds of one forward pass of `k` new tokens with logits for all k
/// rows, after a `ctx`-token context; median of `reps`.
pub fn verify_ms(model: &dyn Model, k: usize, ctx: usize, reps: usize) -> Result<f64, EngineError> {
    let mut cache = model.new_cache(ctx + k + 1);
    let context: Vec<u32> = (0..ctx as u32).map(|i| 1000 + i * 7 % 5000).collect();
    model.forward(&mut cache, &context, LogitRows::Last)?;
    let draft: Vec<u32> = (0..k as u32).map(|i| 2000 + i).collect();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        model.forward(&mut cache, &draft, LogitRows::All)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        cache.truncate(ctx);
    }
    Ok(median(&mut times))
}

/// Tokens per second of a `n`-token prompt pass (median of `reps`).
pub fn prefill_tokens_per_s(model: &dyn Model, n: usize, reps: usize) -> Result<f64, EngineError> {
    let prompt: Vec<u32> = (0..n as u32).map(|i| 1000 + (i * 13) % 20000).collect();
    let mut times = Vec::new();
    for _ in 0..reps {
        let mut cache = model.new_cache(n);
        let t = Instant::now();
        model.forward(&mut cache, &prompt, LogitRows::Last)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(n as f64 / median(&mut times))
}

/// Tokens per second of greedy single-token decoding over `n` steps.
pub fn decode_tokens_per_s(model: &dyn Model, n: usize) -> Result<f64, EngineError> {
    let mut cache = model.new_cache(n + 16);
    let mut logits = model.forward(&mut cache, &[2, 818, 5279, 529], LogitRows::Last)?;
    let t = Instant::now();
    for _ in 0..n {
        let next = crate::sampler::argmax(&logits);
        logits = model.forward(&mut cache, &[next], LogitRows::Last)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
