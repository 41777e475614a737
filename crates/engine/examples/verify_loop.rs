//! Repeats verify-shaped passes (profiling aid): `verify_loop MODEL K N [CTX]`
//! (CTX context tokens before the passes, default 64);
//! MODEL may be `synthetic:NAME` (see `specdec profile --synthetic`).
use std::sync::Arc;

use specdec_engine::{load, load_file, synthetic, LoadOptions, LogitRows};
use specdec_gguf::GgufFile;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let l = match a[1].strip_prefix("synthetic:") {
        Some(name) => {
            let bytes = synthetic::build(synthetic::preset(name).expect("preset"), &|_, _| {});
            load_file(Arc::new(GgufFile::from_bytes(bytes, &a[1]).unwrap()), &LoadOptions::default(), &|_, _| {})
                .unwrap()
        }
        None => load(a[1].as_ref(), &LoadOptions::default(), &|_, _| {}).unwrap(),
    };
    let k: usize = a[2].parse().unwrap();
    let n: usize = a[3].parse().unwrap();
    let m = l.model.as_ref();
    let n_ctx: usize = a.get(4).map_or(64, |s| s.parse().unwrap());
    let mut c = m.new_cache(n_ctx + k + 1);
    let ctx: Vec<u32> = (0..n_ctx as u32).map(|i| 1000 + i).collect();
    m.forward(&mut c, &ctx, LogitRows::Last).unwrap();
    let d: Vec<u32> = (0..k as u32).map(|i| 2000 + i).collect();
    let t = std::time::Instant::now();
    for _ in 0..n {
        m.forward(&mut c, &d, LogitRows::All).unwrap();
        c.truncate(n_ctx);
    }
    println!("k={k}: {:.2} ms/pass", t.elapsed().as_secs_f64() * 1e3 / n as f64);
}
