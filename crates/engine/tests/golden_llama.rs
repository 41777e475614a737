//! Qwen2 and Llama (the DeepSeek-R1 distills' architectures) against
//! transformers: tiny random-weight fixtures made by scripts/make-fixtures.py
//! (f32 weights), loaded from GGUF and from the HF directory (safetensors +
//! tokenizer.json). Logits of a prompt pass, a verify-shaped pass and a
//! single-token pass within 1e-4 of the reference (relative to the row's
//! largest logit), the same greedy tokens, the same tokenization.

use std::path::PathBuf;

use specdec_engine::generate::generate;
use specdec_engine::sampler::SamplingParams;
use specdec_engine::spec::ngram::NgramDrafter;
use specdec_engine::spec::{generate_spec, Controller};
use specdec_engine::{load, LoadOptions, Loaded, LogitRows};

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(arch)
}

fn golden(arch: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(fixture(arch).join("golden.json")).expect("golden.json (scripts/make-fixtures.py)");
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn open(arch: &str, hf: bool, force_f32: bool) -> Loaded {
    let path = if hf { fixture(arch).join("hf") } else { fixture(arch).join("model.gguf") };
    load(&path, &LoadOptions { threads: 2, force_f32 }, &|_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest |ours - reference| over a row, divided by the row's largest |reference|.
fn rel_err(ours: &[f32], reference: &[f64]) -> f64 {
    let scale = reference.iter().fold(0f64, |a, &b| a.max(b.abs())).max(1e-6);
    ours.iter().zip(reference).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max) / scale
}

fn check_passes(arch: &str, hf: bool) {
    let g = golden(arch);
    let l = open(arch, hf, true);
    let m = l.model.as_ref();
    let nv = m.vocab_size();
    let mut cache = m.new_cache(256);
    let mut worst = 0f64;
    for (pi, pass) in g["passes"].as_array().unwrap().iter().enumerate() {
        let toks = ids(&pass["tokens"]);
        let logits = m.forward(&mut cache, &toks, LogitRows::All).unwrap();
        let want = pass["logits"].as_array().unwrap();
        assert_eq!(logits.len(), want.len() * nv, "{arch} pass {pi}: rows");
        for (r, row) in want.iter().enumerate() {
            let reference: Vec<f64> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(reference.len(), nv);
            let e = rel_err(&logits[r * nv..(r + 1) * nv], &reference);
            assert!(e < 1e-4, "{arch} (hf {hf}) pass {pi} row {r}: relative error {e:e}");
            worst = worst.max(e);
        }
    }
    eprintln!("{arch} (hf {hf}): worst relative logit error {worst:e}");
}

fn check_greedy(arch: &str, hf: bool, force_f32: bool) -> Vec<u32> {
    let g = golden(arch);
    let l = open(arch, hf, force_f32);
    let prompt = ids(&g["prompt_ids"]);
    let p = SamplingParams::default();
    let none = |_: u32| false;
    let plain = generate(l.model.as_ref(), &prompt, 16, &p, &none, &mut |_| {}).unwrap().tokens;
    for k in [1, 2, 4] {
        let mut d = NgramDrafter::default();
        let mut ctl = Controller::fixed(k);
        let spec = generate_spec(l.model.as_ref(), &mut d, &mut ctl, &prompt, 16, &p, &none, &mut |_| {}).unwrap();
        assert_eq!(spec.tokens, plain, "{arch} (hf {hf}): ngram k={k} changed greedy output");
    }
    if force_f32 {
        assert_eq!(plain, ids(&g["greedy"]), "{arch} (hf {hf}): greedy tokens differ from transformers");
    }
    plain
}

fn check_tokenizer(arch: &str, hf: bool) {
    let g = golden(arch);
    let l = open(arch, hf, false);
    for case in g["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = l.tokenizer.encode(text, true, false);
        assert_eq!(got, ids(&case["ids"]), "{arch} (hf {hf}): tokens of {text:?}");
        let special = l.tokenizer.bos.is_some_and(|b| got.first() == Some(&b));
        let body = if special { &got[1..] } else { &got[..] };
        assert_eq!(l.tokenizer.decode(body, false), text, "{arch}: round trip");
    }
    assert_eq!(l.tokenizer.encode(g["prompt"].as_str().unwrap(), true, false), ids(&g["prompt_ids"]));
}

#[test]
fn qwen2_gguf_matches_transformers() {
    check_passes("qwen2", false);
    check_greedy("qwen2", false, true);
    check_tokenizer("qwen2", false);
}

#[test]
fn llama_gguf_matches_transformers() {
    check_passes("llama", false);
    check_greedy("llama", false, true);
    check_tokenizer("llama", false);
}

#[test]
fn qwen2_safetensors_matches_transformers() {
    check_passes("qwen2", true);
    check_greedy("qwen2", true, true);
    check_tokenizer("qwen2", true);
}

#[test]
fn llama_sharded_safetensors_matches_transformers() {
    check_passes("llama", true);
    check_greedy("llama", true, true);
    check_tokenizer("llama", true);
}

/// The same weights give the same logits from GGUF and from safetensors,
/// bit for bit, on the packed (non-f32) path too.
#[test]
fn gguf_and_safetensors_give_identical_logits() {
    for arch in ["qwen2", "llama", "deepseek_v3"] {
        let g = golden(arch);
        let prompt = ids(&g["prompt_ids"]);
        let mut outs = Vec::new();
        for hf in [false, true] {
            let l = open(arch, hf, false);
            let mut cache = l.model.new_cache(64);
            outs.push(l.model.forward(&mut cache, &prompt, LogitRows::All).unwrap());
            outs.push(check_greedy(arch, hf, false).iter().map(|&t| t as f32).collect());
        }
        assert!(outs[0] == outs[2], "{arch}: logits differ between GGUF and safetensors");
        assert!(outs[1] == outs[3], "{arch}: greedy tokens differ between GGUF and safetensors");
    }
}

#[test]
fn deepseek_v3_gguf_matches_transformers() {
    check_passes("deepseek_v3", false);
    check_greedy("deepseek_v3", false, true);
}

#[test]
fn deepseek_v3_safetensors_matches_transformers() {
    check_passes("deepseek_v3", true);
    check_greedy("deepseek_v3", true, true);
    check_tokenizer("deepseek_v3", true);
}
