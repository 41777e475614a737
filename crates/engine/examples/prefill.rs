//! Times one prefill of N tokens (profiling aid): `prefill MODEL N [CHUNK]`.
//! With CHUNK, the prompt goes through consecutive passes of CHUNK rows;
//! REPS=7 repeats it 7 times (default 3); prints the median and the best.
use specdec_engine::{load, LoadOptions, LogitRows};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let l = load(a[1].as_ref(), &LoadOptions::default(), &|_, _| {}).unwrap();
    let n: usize = a[2].parse().unwrap();
    let chunk: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(n);
    let ids: Vec<u32> = (0..n as u32).map(|i| 1000 + i * 13 % 20000).collect();
    let reps: usize = std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut times = Vec::new();
    for _ in 0..reps {
        let mut c = l.model.new_cache(n);
        let t = std::time::Instant::now();
        for part in ids.chunks(chunk) {
            l.model.forward(&mut c, part, LogitRows::Last).unwrap();
        }
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!("{n} tokens in passes of {chunk}: median {:.3}s, best {:.3}s of {reps}", times[reps / 2], times[0]);
}
