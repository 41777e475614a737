//! The lossless contract: speculative output equals plain output token for
//! token, for every drafter (including ones that are always wrong or hostile),
//! greedy and seeded sampling, on a tiny model and on the default model.

mod common;

use specdec_engine::generate::generate;
use specdec_engine::models::head::load_head;
use specdec_engine::sampler::SamplingParams;
use specdec_engine::spec::auto::AutoDrafter;
use specdec_engine::spec::model_drafter::ModelDrafter;
use specdec_engine::spec::mtp::MtpDrafter;
use specdec_engine::spec::ngram::NgramDrafter;
use specdec_engine::spec::suffix::SuffixDrafter;
use specdec_engine::spec::testing::{AdversarialDrafter, OracleDrafter, RandomDrafter};
use specdec_engine::spec::{generate_spec, Controller, Drafter};
use specdec_engine::{Loaded, Model};
use specdec_gguf::GgufFile;

fn plain(m: &dyn Model, prompt: &[u32], n: usize, p: &SamplingParams, eog: &dyn Fn(u32) -> bool) -> Vec<u32> {
    generate(m, prompt, n, p, eog, &mut |_| {}).unwrap().tokens
}

fn drafters(l: &Loaded, reference: &[u32], draft_model: Option<Box<dyn Model>>) -> Vec<Box<dyn Drafter>> {
    let v = l.model.vocab_size() as u32;
    let eos = l.tokenizer.eos.unwrap_or(1);
    let mut d: Vec<Box<dyn Drafter>> = vec![
        Box::new(NgramDrafter::default()),
        Box::new(SuffixDrafter::default()),
        Box::new(RandomDrafter::new(v, 3)),
        Box::new(OracleDrafter::new(reference.to_vec())),
        Box::new(AdversarialDrafter::new(eos, v)),
    ];
    if let Some(m) = draft_model {
        d.push(Box::new(ModelDrafter::new(m, SamplingParams::default(), 512, "draft".into())));
    }
    // An MTP head (random weights: it drafts badly, through every code path)
    // alone and inside `auto`.
    let vocab: Vec<u32> = (0..v.min(4096)).rev().collect();
    let bytes = specdec_engine::fixtures::random_head(&l.file, vocab, 7).unwrap();
    let head_file = GgufFile::from_bytes(bytes, "random-head").unwrap();
    let head = load_head(l.file.clone(), &head_file, l.pool.clone(), false).unwrap();
    let ctx = 1024;
    d.push(Box::new(MtpDrafter::new(head.clone(), ctx, "mtp:random".into())));
    d.push(Box::new(AutoDrafter::new(SuffixDrafter::default(), MtpDrafter::new(head, ctx, "mtp:random".into()))));
    d
}

fn check(
    l: &Loaded,
    prompts: &[Vec<u32>],
    n: usize,
    params: &SamplingParams,
    draft_model: &dyn Fn() -> Option<Box<dyn Model>>,
) {
    let m = l.model.as_ref();
    let eog = |t: u32| l.tokenizer.is_eog(t);
    for prompt in prompts {
        let want = plain(m, prompt, n, params, &eog);
        for mut d in drafters(l, &want, draft_model()) {
            for ctl in [1, 2, 4, 8, 16].map(Controller::fixed).into_iter().chain([Controller::new(8)]) {
                let mut ctl = ctl;
                let got = generate_spec(m, d.as_mut(), &mut ctl, prompt, n, params, &eog, &mut |_| {}).unwrap();
                assert_eq!(got.tokens, want, "drafter {} (fixed k {:?}) changed the output", d.name(), ctl.fixed_k);
                if d.name() == "oracle" && ctl.fixed_k.is_some() && want.len() > 8 {
                    assert!(got.spec.num_accepted_tokens > 0, "oracle drafts were never accepted");
                }
            }
        }
    }
}

#[test]
fn tiny_model_greedy_and_sampled_are_lossless() {
    let bytes = common::tiny_gemma3(11, &|_, _| {});
    let l = common::load_bytes(&bytes).unwrap();
    let draft = || Some(common::load_bytes(&common::tiny_gemma3(12, &|_, _| {})).unwrap().model);
    let prompts: Vec<Vec<u32>> =
        vec![vec![2, 266, 267, 266, 267, 266], vec![2, 100, 101, 102, 100, 101], (2..30).collect()];
    check(&l, &prompts, 40, &SamplingParams::default(), &draft);
    let sampled =
        SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, repeat_penalty: 1.1, seed: 5, ..Default::default() };
    check(&l, &prompts, 40, &sampled, &|| None);
}

#[test]
fn default_model_greedy_is_lossless() {
    let l = common::load_default();
    let texts = [
        "The capital of France is Paris. The capital of France is",
        "def fib(n):\n    if n < 2:\n        return n\n    return",
    ];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| l.tokenizer.encode(t, true, false)).collect();
    check(&l, &prompts, 24, &SamplingParams::default(), &|| None);
}

#[test]
fn eos_and_max_tokens_inside_a_draft() {
    let l = common::load_bytes(&common::tiny_gemma3(21, &|_, _| {})).unwrap();
    let m = l.model.as_ref();
    let prompt: Vec<u32> = vec![2, 40, 41, 42];
    let params = SamplingParams::default();
    let free = plain(m, &prompt, 30, &params, &|_| false);
    // Treat the token at position 9 as end-of-sequence: plain stops there.
    let stop = free[9];
    let eog = move |t: u32| t == stop;
    let want = plain(m, &prompt, 30, &params, &eog);
    assert_eq!(*want.last().unwrap(), stop);
    for k in [4usize, 16] {
        let mut d = OracleDrafter::new(free.clone());
        let got = generate_spec(m, &mut d, &mut Controller::fixed(k), &prompt, 30, &params, &eog, &mut |_| {}).unwrap();
        assert_eq!(got.tokens, want, "EOS inside a draft of {k}");
        assert!(got.stopped_on_eog);
        // A token budget that ends mid-draft.
        for n in [1usize, 5, 7] {
            let mut d = OracleDrafter::new(free.clone());
            let got = generate_spec(m, &mut d, &mut Controller::fixed(k), &prompt, n, &params, &|_| false, &mut |_| {})
                .unwrap();
            assert_eq!(got.tokens, free[..n].to_vec(), "max tokens {n} with k {k}");
        }
    }
}

#[test]
fn default_model_past_the_sliding_window() {
    let l = common::load_default();
    let m = l.model.as_ref();
    let text = "Once upon a time, in a small village by the sea, there lived an old fisherman who told stories.";
    let prompt = l.tokenizer.encode(text, true, false);
    let eog = |t: u32| l.tokenizer.is_eog(t);
    let params = SamplingParams::default();
    // 560 new tokens carry every local layer's window (512) past its start.
    let want = plain(m, &prompt, 560, &params, &|_| false);
    assert_eq!(want.len(), 560);
    let mut d = SuffixDrafter::default();
    let got =
        generate_spec(m, &mut d, &mut Controller::new(8), &prompt, 560, &params, &|_| false, &mut |_| {}).unwrap();
    assert_eq!(got.tokens, want);
    let _ = eog;
}

#[test]
fn drafts_shrink_at_the_context_limit() {
    // Context of 64 positions: prompt + output fill it exactly.
    let bytes = common::tiny_gemma3(5, &|kv, _| {
        for (k, v) in kv.iter_mut() {
            if k == "gemma3.context_length" {
                *v = specdec_gguf::Value::U32(64);
            }
        }
    });
    let l = common::load_bytes(&bytes).unwrap();
    let m = l.model.as_ref();
    let prompt: Vec<u32> = (2..22).collect();
    let params = SamplingParams::default();
    let want = plain(m, &prompt, 44, &params, &|_| false);
    let mut d = OracleDrafter::new(want.clone());
    let got =
        generate_spec(m, &mut d, &mut Controller::fixed(8), &prompt, 44, &params, &|_| false, &mut |_| {}).unwrap();
    assert_eq!(got.tokens, want);
}

#[test]
fn sampled_draft_model_runs_rejection_sampling_end_to_end() {
    let l = common::load_bytes(&common::tiny_gemma3(31, &|_, _| {})).unwrap();
    let draft = common::load_bytes(&common::tiny_gemma3(31, &|_, _| {})).unwrap().model;
    let m = l.model.as_ref();
    let params = SamplingParams { temperature: 0.8, seed: 9, ..Default::default() };
    let mut d = ModelDrafter::new(draft, params.clone(), 256, "same weights".into());
    d.min_confidence = 0.0;
    assert!(d.is_sampled());
    let prompt: Vec<u32> = vec![2, 50, 51, 52];
    let got =
        generate_spec(m, &mut d, &mut Controller::fixed(4), &prompt, 40, &params, &|_| false, &mut |_| {}).unwrap();
    assert_eq!(got.tokens.len(), 40);
    assert!(got.tokens.iter().all(|&t| (t as usize) < m.vocab_size()));
    assert!(got.spec.num_drafts > 0);
    // Same weights for draft and target: q equals p, so every draft token is accepted.
    assert_eq!(got.spec.num_accepted_tokens, got.spec.num_draft_tokens, "{:?}", got.spec);
}

/// L12: with a sampled draft model (q != p), the first three emitted tokens
/// have the same marginals as plain sampling (two-sample chi-square, p > 1e-4).
#[test]
fn sampled_speculation_has_the_target_distribution() {
    let l = common::load_bytes(&common::tiny_gemma3(41, &|_, _| {})).unwrap();
    let m = l.model.as_ref();
    let prompt: Vec<u32> = vec![2, 60, 61, 62];
    let n = 2000;
    let mut plain_counts = vec![std::collections::HashMap::<u32, usize>::new(); 3];
    let mut spec_counts = plain_counts.clone();
    for i in 0..n {
        let params = SamplingParams { temperature: 1.0, top_k: 6, seed: 1000 + i as u64, ..Default::default() };
        let a = plain(m, &prompt, 3, &params, &|_| false);
        let draft = common::load_bytes(&common::tiny_gemma3(42, &|_, _| {})).unwrap().model;
        let spec_params = SamplingParams { seed: 900_000 + i as u64, ..params.clone() };
        let mut d = ModelDrafter::new(draft, spec_params.clone(), 64, "other".into());
        d.min_confidence = 0.0;
        let b = generate_spec(m, &mut d, &mut Controller::fixed(3), &prompt, 3, &spec_params, &|_| false, &mut |_| {})
            .unwrap()
            .tokens;
        for j in 0..3 {
            *plain_counts[j].entry(a[j]).or_default() += 1;
            *spec_counts[j].entry(b[j]).or_default() += 1;
        }
    }
    for j in 0..3 {
        let keys: std::collections::BTreeSet<u32> =
            plain_counts[j].keys().chain(spec_counts[j].keys()).copied().collect();
        let chi: f64 = keys
            .iter()
            .map(|t| {
                let (x, y) =
                    (*plain_counts[j].get(t).unwrap_or(&0) as f64, *spec_counts[j].get(t).unwrap_or(&0) as f64);
                (x - y).powi(2) / (x + y)
            })
            .sum();
        let df = (keys.len() - 1).max(1) as f64;
        // Wilson-Hilferty critical value at alpha = 1e-4 (z = 3.719).
        let t = 1.0 - 2.0 / (9.0 * df) + 3.719 * (2.0 / (9.0 * df)).sqrt();
        let crit = df * t * t * t;
        assert!(chi < crit, "position {j}: chi2 {chi:.1} >= {crit:.1} over {} tokens", keys.len());
    }
}

/// L11: the same seed gives the same speculative output every time.
#[test]
fn seeded_speculation_is_deterministic() {
    let l = common::load_bytes(&common::tiny_gemma3(43, &|_, _| {})).unwrap();
    let m = l.model.as_ref();
    let params = SamplingParams { temperature: 0.9, seed: 77, ..Default::default() };
    let prompt: Vec<u32> = vec![2, 7, 8, 9, 7, 8];
    let runs: Vec<Vec<u32>> = (0..20)
        .map(|_| {
            let mut d = SuffixDrafter::default();
            generate_spec(m, &mut d, &mut Controller::new(8), &prompt, 32, &params, &|_| false, &mut |_| {})
                .unwrap()
                .tokens
        })
        .collect();
    assert!(runs.windows(2).all(|w| w[0] == w[1]));
}

/// The step-wise session with the prompt prefilled in small chunks emits
/// exactly what plain decoding does (greedy and seeded sampling).
#[test]
fn chunked_prefill_sessions_are_lossless() {
    use specdec_engine::spec::Session;
    let l = common::load_bytes(&common::tiny_gemma3(21, &|_, _| {})).unwrap();
    let m = l.model.as_ref();
    let eog = |t: u32| l.tokenizer.is_eog(t);
    let prompt: Vec<u32> = (0..45).map(|i| 5 + (i * 17 % 280)).collect();
    for params in [SamplingParams::default(), SamplingParams { temperature: 0.8, seed: 5, ..Default::default() }] {
        let want = plain(m, &prompt, 40, &params, &eog);
        for chunk in [1usize, 7, 16, 1000] {
            let mut d = NgramDrafter::default();
            let mut ctl = Controller::new(4);
            let mut s = Session::new(m, &prompt, 40, 4, &params).unwrap();
            s.prefill_chunk = chunk;
            let mut passes = 0;
            while !s.is_done() {
                let pass = s.plan(m, &mut d, &mut ctl);
                assert!(pass.tokens.len() <= chunk.max(5), "chunk {chunk}: pass of {}", pass.tokens.len());
                let logits = m.forward(&mut s.cache, &pass.tokens, pass.rows).unwrap();
                s.absorb(m, specdec_engine::Scores::Logits(&logits), None, 0.001, &mut d, &mut ctl, &eog);
                passes += 1;
            }
            assert_eq!(s.out, want, "chunk {chunk}, temperature {}", params.temperature);
            assert!(passes >= prompt.len().div_ceil(chunk), "chunk {chunk}: {passes} passes");
        }
    }
}
