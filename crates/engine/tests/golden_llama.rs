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
    // The reference is f32 throughout, and so is the 1e-4 bound: attention
    // in bf16 products (the default where the CPU has them) is checked by
    // the kernel tests and against llama.cpp on the default model.
    specdec_kernels::set_attn_math(specdec_kernels::AttnMath::F32);
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

/// DeepSeek's MTP module against the reference MTP forward in
/// scripts/make-fixtures.py: teacher-forced rows over the prompt, then one
/// chained step from its own post-norm hidden state.
#[test]
fn deepseek_mtp_matches_reference() {
    use specdec_engine::models::deepseek2::Mtp;
    use specdec_engine::spec::mtp::MtpHead;
    let g = golden("deepseek_v3");
    let gm = &g["mtp"];
    for hf in [false, true] {
        let l = open("deepseek_v3", hf, true);
        let m = l.model.as_ref();
        let nv = m.vocab_size();
        let prompt = ids(&g["prompt_ids"]);
        let mut cache = m.new_cache(64);
        let (_, hidden) = m.forward_hidden(&mut cache, &prompt, LogitRows::Last).unwrap();
        let mtp = Mtp::load(l.file.clone(), std::sync::Arc::new(specdec_kernels::Pool::new(2)), true).unwrap();
        let d = mtp.n_embd();
        assert_eq!(hidden.len(), prompt.len() * d);
        let mut mc = mtp.new_cache(64);
        let next = ids(&gm["next_tokens"]);
        let (logits, hn) = mtp.forward(&mut mc, &next, &hidden, LogitRows::All).unwrap();
        let mut worst = 0f64;
        for (r, row) in gm["logits"].as_array().unwrap().iter().enumerate() {
            let reference: Vec<f64> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            let e = rel_err(&logits[r * nv..(r + 1) * nv], &reference);
            assert!(e < 1e-4, "mtp (hf {hf}) row {r}: relative error {e:e}");
            worst = worst.max(e);
        }
        let last = &logits[(next.len() - 1) * nv..];
        let d1 = specdec_engine::sampler::argmax(last);
        assert_eq!(d1, gm["chain_token"].as_u64().unwrap() as u32);
        let (chain, _) = mtp.forward(&mut mc, &[d1], &hn[(next.len() - 1) * d..], LogitRows::Last).unwrap();
        let reference: Vec<f64> = gm["chain_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let e = rel_err(&chain, &reference);
        assert!(e < 1e-4, "mtp (hf {hf}) chained step: relative error {e:e}");
        eprintln!("mtp (hf {hf}): worst relative logit error {:e}", worst.max(e));
    }
}

/// `--drafter mtp` is lossless on the DeepSeek fixture: greedy for fixed k in
/// {1, 2, 4} and adaptive k, and seeded sampling, token for token with plain
/// decoding; and it does draft (the hidden-state handover works).
#[test]
fn mtp_drafter_is_lossless() {
    use specdec_engine::models::deepseek2::Mtp;
    use specdec_engine::spec::mtp::MtpDrafter;
    let g = golden("deepseek_v3");
    let prompt = ids(&g["prompt_ids"]);
    for hf in [false, true] {
        let l = open("deepseek_v3", hf, false);
        let m = l.model.as_ref();
        let mtp = std::sync::Arc::new(Mtp::load(l.file.clone(), l.pool.clone(), false).unwrap());
        let none = |_: u32| false;
        let sampled = SamplingParams { temperature: 0.8, seed: 11, ..SamplingParams::default() };
        for p in [SamplingParams::default(), sampled] {
            let plain = generate(m, &prompt, 40, &p, &none, &mut |_| {}).unwrap().tokens;
            for ctl in [1, 2, 4].map(Controller::fixed).into_iter().chain([Controller::new(4)]) {
                let mut ctl = ctl;
                let mut d = MtpDrafter::new(mtp.clone(), 256, "mtp".into());
                d.min_confidence = 0.0;
                let out = generate_spec(m, &mut d, &mut ctl, &prompt, 40, &p, &none, &mut |_| {}).unwrap();
                assert_eq!(
                    out.tokens, plain,
                    "mtp (hf {hf}, k {:?}, T {}) changed the output",
                    ctl.fixed_k, p.temperature
                );
                if ctl.fixed_k.is_some() {
                    assert!(out.spec.num_drafts > 0, "mtp never drafted");
                }
            }
        }
    }
}

/// The session hands the drafter the right rows: after prefill, position 0
/// onward with the prompt shifted by one plus the first token; after each
/// verify pass, the pass's first rows with the emitted tokens. The MTP
/// drafter's first draft after prefill is the reference MTP's prediction.
#[test]
fn session_hands_over_hidden_states_by_position() {
    use specdec_engine::models::deepseek2::Mtp;
    use specdec_engine::spec::mtp::{MtpDrafter, MtpHead};
    use specdec_engine::spec::{Draft, Drafter};
    struct Spy {
        inner: MtpDrafter,
        seen: Vec<(usize, usize, Vec<u32>)>,
        first_draft: Option<Vec<u32>>,
    }
    impl Drafter for Spy {
        fn name(&self) -> String {
            "spy".into()
        }
        fn begin(&mut self, p: &[u32]) {
            self.inner.begin(p)
        }
        fn propose(&mut self, c: &[u32], k: usize) -> Draft {
            let d = self.inner.propose(c, k);
            self.first_draft.get_or_insert(d.tokens.clone());
            d
        }
        fn accept(&mut self, t: &[u32]) {
            self.inner.accept(t)
        }
        fn wants_hidden(&self) -> bool {
            true
        }
        fn observe_hidden(&mut self, pos0: usize, hidden: &[f32], next: &[u32]) {
            self.seen.push((pos0, hidden.len(), next.to_vec()));
            self.inner.observe_hidden(pos0, hidden, next)
        }
    }
    let g = golden("deepseek_v3");
    let prompt = ids(&g["prompt_ids"]);
    let l = open("deepseek_v3", false, true);
    let m = l.model.as_ref();
    let mtp = std::sync::Arc::new(Mtp::load(l.file.clone(), l.pool.clone(), true).unwrap());
    let d = mtp.n_embd();
    let mut spy = Spy { inner: MtpDrafter::new(mtp, 256, "mtp".into()), seen: vec![], first_draft: None };
    spy.inner.min_confidence = 0.0;
    let mut ctl = Controller::fixed(3);
    let p = SamplingParams::default();
    let out = generate_spec(m, &mut spy, &mut ctl, &prompt, 12, &p, &|_| false, &mut |_| {}).unwrap();
    let (pos0, n, next) = &spy.seen[0];
    let mut want: Vec<u32> = prompt[1..].to_vec();
    want.push(out.tokens[0]);
    assert_eq!((*pos0, *n, next), (0, prompt.len() * d, &want));
    assert_eq!(spy.first_draft.as_ref().unwrap()[0], g["mtp"]["chain_token"].as_u64().unwrap() as u32);
    // Later rounds: positions continue where the emitted tokens stand.
    let mut pos = prompt.len();
    for (pos0, n, next) in &spy.seen[1..] {
        assert_eq!(*pos0, pos, "observe_hidden position");
        assert_eq!(*n, next.len() * d);
        pos += next.len();
    }
    // The first token came with the prompt rows; every later one was observed once.
    assert_eq!(pos, prompt.len() + out.tokens.len() - 1);
}

/// A pass that wants only its last row's logits runs the last layer's
/// queries, attention and feed-forward for that row alone: its logits and
/// the cache it leaves equal those of a pass computing every row.
#[test]
fn last_row_only_pass_equals_all_rows() {
    for arch in ["llama", "qwen2"] {
        let l = open(arch, false, false);
        let m = l.model.as_ref();
        let nv = m.vocab_size();
        let toks: Vec<u32> = (0..24).map(|i| (3 + i * 29) % nv as u32).collect();
        let (mut c_all, mut c_last) = (m.new_cache(32), m.new_cache(32));
        let all = m.forward(&mut c_all, &toks, LogitRows::All).unwrap();
        let last = m.forward(&mut c_last, &toks, LogitRows::Last).unwrap();
        let want = &all[(toks.len() - 1) * nv..];
        assert!(last.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "{arch}: logits differ");
        // What follows sees the same cache.
        let a = m.forward(&mut c_all, &[toks[1]], LogitRows::Last).unwrap();
        let b = m.forward(&mut c_last, &[toks[1]], LogitRows::Last).unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{arch}: cache differs");
    }
}
