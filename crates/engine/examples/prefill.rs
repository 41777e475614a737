//! Times one prefill pass of N tokens (profiling aid): `prefill MODEL N`.
use specdec_engine::{load, LoadOptions, LogitRows};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let l = load(a[1].as_ref(), &LoadOptions::default(), &|_, _| {}).unwrap();
    let n: usize = a[2].parse().unwrap();
    let ids: Vec<u32> = (0..n as u32).map(|i| 1000 + i * 13 % 20000).collect();
    for _ in 0..2 {
        let mut c = l.model.new_cache(n);
        let t = std::time::Instant::now();
        l.model.forward(&mut c, &ids, LogitRows::Last).unwrap();
        println!("{n} tokens: {:.3}s", t.elapsed().as_secs_f64());
    }
}
