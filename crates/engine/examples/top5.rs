//! Prints the top-5 log-probs after a token sequence (debugging aid):
//! `cargo run --release --example top5 -- MODEL 2,818,5279`.
use specdec_engine::{load, LoadOptions, LogitRows};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let opts = LoadOptions { threads: 0, force_f32: std::env::var("F32").is_ok() };
    let l = load(a[1].as_ref(), &opts, &|_, _| {}).unwrap();
    let ids: Vec<u32> = a[2].split(',').map(|s| s.parse().unwrap()).collect();
    let mut c = l.model.new_cache(ids.len());
    let lg = l.model.forward(&mut c, &ids, LogitRows::Last).unwrap();
    let max = lg.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let lse = lg.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    let mut idx: Vec<usize> = (0..lg.len()).collect();
    idx.sort_by(|&x, &y| lg[y].total_cmp(&lg[x]));
    let top: Vec<(usize, f64)> = idx[..5].iter().map(|&i| (i, lg[i] as f64 - lse)).collect();
    println!("{top:?}");
}
