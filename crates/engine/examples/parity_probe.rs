//! Per-prompt teacher-forced log-prob error against llama.cpp's reference
//! (debugging aid): `parity_probe MODEL REFERENCE.jsonl`.
use specdec_engine::{load, LoadOptions, LogitRows};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let opts = LoadOptions { threads: 0, force_f32: std::env::var("F32").is_ok() };
    let l = load(a[1].as_ref(), &opts, &|_, _| {}).unwrap();
    let text = std::fs::read_to_string(&a[2]).unwrap();
    let vocab = l.model.vocab_size();
    for (n, line) in text.lines().enumerate() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let ids = |v: &serde_json::Value| {
            v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<u32>>()
        };
        let prompt = ids(&r["prompt_ids"]);
        let want = ids(&r["output_ids"]);
        let mut seq = prompt.clone();
        seq.extend_from_slice(&want[..want.len() - 1]);
        let mut c = l.model.new_cache(seq.len());
        let lg = l.model.forward(&mut c, &seq, LogitRows::All).unwrap();
        let mut errs = vec![];
        for (s, st) in r["steps"].as_array().unwrap().iter().enumerate() {
            let row = &lg[(prompt.len() - 1 + s) * vocab..][..vocab];
            let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
            let lp = row[st["id"].as_u64().unwrap() as usize] as f64 - lse;
            errs.push((lp - st["logprob"].as_f64().unwrap()).abs());
        }
        let mx = errs.iter().cloned().fold(0.0, f64::max);
        let am = errs.iter().position(|&e| e == mx).unwrap();
        println!(
            "prompt {n:2} len {:4}: step0 err {:.4}, max err {:.4} at step {am}, mean {:.4}",
            prompt.len(),
            errs[0],
            mx,
            errs.iter().sum::<f64>() / errs.len() as f64
        );
    }
}
