//! The trained head is the drafted head: candle's training forward equals the
//! engine's `Gemma3Head` on the written file; training lowers the loss, is
//! deterministic for a seed and resumes exactly; a head for another model is
//! refused.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use specdec_distill::model::{self, Inputs, Params};
use specdec_distill::{data, distill, self_generate, write_head, DistillConfig, StepReport};
use specdec_engine::fixtures::tiny_gemma3;
use specdec_engine::generate::generate;
use specdec_engine::models::head::{self, load_head};
use specdec_engine::rng::Rng;
use specdec_engine::sampler::SamplingParams;
use specdec_engine::{load_file, LoadOptions, Loaded, LogitRows};
use specdec_gguf::{GgmlType, GgufFile};

fn tiny(seed: u64) -> Loaded {
    // candle's training forward is f32 throughout, and so is the 1e-3 bound on
    // log q: pin f32 attention (bf16 attention, the default where the CPU has
    // it, is checked by the kernel tests and against llama.cpp).
    specdec_kernels::set_attn_math(specdec_kernels::AttnMath::F32);
    let bytes = tiny_gemma3(seed, &|_, _| {});
    let file = Arc::new(GgufFile::from_bytes(bytes, "tiny-gemma3").unwrap());
    load_file(file, &LoadOptions { threads: 1, force_f32: true }, &|_, _| {}).unwrap()
}

/// Largest |log_softmax(logits) - logq| over a row.
fn max_logq_diff(logits: &[f32], logq: &[f32]) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let lse = max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
    logits.iter().zip(logq).map(|(&x, &q)| ((x - lse) - q).abs()).fold(0f32, f32::max)
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-distill-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn training_forward_equals_the_engine_head() {
    let target = tiny(3);
    let shape = head::head_shape(&target.file).unwrap();
    let dev = Device::Cpu;
    let layer = shape.init_layer;
    let init = |name: &str, dims: &[usize]| {
        Ok(head::tensor_f32(&target.file, &name.replacen("blk.0.", &format!("blk.{layer}."), 1), dims)?)
    };
    let params = Params::init(&shape, &init, 5, &dev).unwrap();
    // Move every parameter off its starting point, and onto the Q8_0 grid
    // for matrices, so the written file holds exactly candle's numbers.
    let mut rng = Rng::new(9);
    for (name, var) in &params.vars {
        let mut v: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for x in v.iter_mut() {
            *x += (rng.uniform() as f32 - 0.5) * 0.2;
        }
        if params.dims[name].len() == 2 {
            let q = head::quantize_q8_0(&v);
            specdec_kernels::quant::dequantize_row(GgmlType::Q8_0, &q, &mut v).unwrap();
        }
        var.set(&Tensor::from_vec(v, var.as_tensor().shape(), &dev).unwrap()).unwrap();
    }
    let vocab: Vec<u32> = (0..300u32).rev().step_by(3).collect();
    let n = vocab.len();
    let seq: Vec<u32> = vec![2, 270, 275, 281, 266, 290, 270, 299];
    let l = seq.len() - 1;
    let d = shape.n_embd;
    let mut cache = target.model.new_cache(16);
    let (_, hidden) = target.model.forward_hidden(&mut cache, &seq, LogitRows::Last).unwrap();

    let (cos, sin) = model::rope_tables(&shape, l, &dev).unwrap();
    let inputs = Inputs {
        emb: Tensor::from_vec(head::embed_rows(&target.file, &shape, &seq[1..]).unwrap(), (1, l, d), &dev).unwrap(),
        hidden: Tensor::from_vec(hidden[..l * d].to_vec(), (1, l, d), &dev).unwrap(),
        cos,
        sin,
        masks: model::masks(l, shape.window, 3, &dev).unwrap(),
    };
    let out_rows = Tensor::from_vec(head::output_rows(&target.file, d, &vocab).unwrap(), (n, d), &dev).unwrap();
    let logq: Vec<f32> =
        model::forward(&params, &shape, &out_rows, &inputs).unwrap().flatten_all().unwrap().to_vec1().unwrap();

    let dir = tmp("parity");
    let path = dir.join("h.gguf");
    write_head(&path, &target.file, &params, &vocab, &DistillConfig::default(), 0).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let h = load_head(target.file.clone(), &file, target.pool.clone(), true).unwrap();
    let mut hc = h.new_cache(16);
    let (logits, _) = h.forward(&mut hc, &seq[1..], &hidden[..l * d], LogitRows::All).unwrap();
    assert_eq!(logits.len(), l * n);
    let worst =
        (0..l).map(|i| max_logq_diff(&logits[i * n..(i + 1) * n], &logq[i * n..(i + 1) * n])).fold(0f32, f32::max);
    eprintln!("worst |log q engine - log q candle| = {worst:e}");
    assert!(worst < 1e-3, "engine head and training forward differ by {worst}");
    // Unrolled training (depths 2 and 3) is what chaining computes: from
    // each verified row r, the engine chains the head's own post-norm output
    // with the next token at positions r+1 and r+2.
    let unrolled: Vec<Vec<f32>> = model::forward_unrolled(&params, &shape, &out_rows, &inputs, 3)
        .unwrap()
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(unrolled[0], logq, "depth 1 of the unrolled pass is the plain forward");
    let mut worst = 0f32;
    let mut compared = 0;
    for r in 0..l - 2 {
        let mut hc = h.new_cache(16);
        let (_, hs) = h.forward(&mut hc, &seq[1..r + 2], &hidden[..(r + 1) * d], LogitRows::None).unwrap();
        let mut y = hs[r * d..].to_vec();
        for t in 2..=3 {
            let pos = r + t - 1;
            let (row, next) = h.forward(&mut hc, &[seq[pos + 1]], &y, LogitRows::Last).unwrap();
            worst = worst.max(max_logq_diff(&row, &unrolled[t - 1][pos * n..(pos + 1) * n]));
            compared += 1;
            y = next;
        }
    }
    eprintln!("worst |log q engine chain - log q unrolled| = {worst:e} over {compared} rows");
    assert_eq!(compared, 2 * (l - 2));
    assert!(worst < 1e-3, "engine chaining and unrolled training differ by {worst}");

    // The head's logit index maps back to the draft vocabulary's token.
    assert_eq!(h.token(0), Some(vocab[0]));
    assert_eq!(h.token(n), None);

    // A head for another model (other embedding) is refused with a clear error.
    let other = tiny(4);
    let err = load_head(other.file.clone(), &file, other.pool.clone(), true).err().expect("must refuse");
    assert!(err.to_string().contains("trained for another model"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn train(target: &Loaded, dir: &Path, steps: usize, stop_at: Option<usize>, resume: bool) -> (Vec<f64>, Vec<u8>) {
    let data = dir.join("data.txt");
    if !data.exists() {
        let mut text = String::new();
        let words = ["hello", "abc", "ab", "c", "a", "he", "llo", "b"];
        let mut rng = Rng::new(1);
        for i in 0..3000 {
            text.push_str(words[(rng.next_u64() % 8) as usize]);
            text.push(if i % 17 == 0 { '\n' } else { ' ' });
        }
        std::fs::write(&data, text).unwrap();
    }
    let cfg = DistillConfig {
        data: vec![data],
        out: dir.join("head.gguf"),
        steps,
        batch: 2,
        seq_len: 8,
        lr: 3e-3,
        warmup: 2,
        draft_vocab: 64,
        seed: 11,
        checkpoint_every: 100,
        resume,
        eval_seqs: 2,
        ..DistillConfig::default()
    };
    let mut losses = Vec::new();
    distill(target, &cfg, &mut |r: &StepReport| {
        if r.phase == "training" {
            losses.push(r.loss);
        }
        stop_at != Some(r.step)
    })
    .unwrap();
    (losses, std::fs::read(&cfg.out).unwrap())
}

#[test]
fn training_lowers_the_loss_is_deterministic_and_resumes_exactly() {
    let target = tiny(3);
    let (a, b, c) = (tmp("a"), tmp("b"), tmp("c"));
    let (losses, head_a) = train(&target, &a, 40, None, false);
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!("loss {first:.4} -> {last:.4}");
    assert!(last < first * 0.95, "loss did not fall: {first} -> {last}");

    let (_, head_b) = train(&target, &b, 40, None, false);
    assert!(head_a == head_b, "same seed, different head");

    // Interrupted at step 15, then resumed: the same head as the straight run.
    let (part, _) = train(&target, &c, 40, Some(15), false);
    assert_eq!(part.len(), 15);
    let (rest, head_c) = train(&target, &c, 40, None, true);
    assert_eq!(rest.len(), 25);
    assert!(head_a == head_c, "resumed run differs from the straight run");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// Self-generated sequences are the target's own greedy text (drafted by the
/// suffix drafter, so this also checks that it changes nothing), exactly
/// `len` tokens even past an end token; prompts come one per line with `\n`
/// escapes, cut to the length asked; an empty prompt file is an error.
#[test]
fn self_generation_is_the_targets_greedy_text_and_prompts_parse() {
    let target = tiny(5);
    let dir = tmp("prompts");
    let file = dir.join("prompts.txt");
    std::fs::write(&file, "hello abc\\nab c\n\n   \nhe llo b a c ab hello abc he llo b a c ab hello\n").unwrap();
    let prompts = data::read_prompts(&target.tokenizer, &file, 12).unwrap();
    assert_eq!(prompts.len(), 2, "blank lines are skipped");
    assert_eq!(prompts[0], target.tokenizer.encode("hello abc\nab c", true, false));
    assert_eq!(prompts[1].len(), 12, "cut to max_len");
    for p in &prompts {
        let seq = self_generate(&target, p, 40).unwrap();
        assert_eq!(seq.len(), 40);
        assert_eq!(&seq[..p.len()], &p[..]);
        let plain =
            generate(target.model.as_ref(), p, 40 - p.len(), &SamplingParams::default(), &|_| false, &mut |_| {})
                .unwrap();
        assert_eq!(&seq[p.len()..], &plain.tokens[..]);
    }
    std::fs::write(&file, "\n  \n").unwrap();
    let err = data::read_prompts(&target.tokenizer, &file, 6).unwrap_err();
    assert!(err.to_string().contains("no prompts"), "{err}");

    // Training with them runs and the draft vocabulary covers their tokens.
    let text = dir.join("data.txt");
    std::fs::write(&text, "abc he llo b a c ab hello ".repeat(300)).unwrap();
    std::fs::write(&file, "hello abc\nhe llo\n").unwrap();
    let cfg = DistillConfig {
        data: vec![text],
        out: dir.join("head.gguf"),
        steps: 2,
        batch: 2,
        seq_len: 8,
        draft_vocab: 64,
        eval_seqs: 2,
        self_gen_prompts: Some(file),
        ..DistillConfig::default()
    };
    let mut generated = 0;
    let summary = distill(&target, &cfg, &mut |r: &StepReport| {
        if r.phase == "self-generating" {
            generated += 1;
        }
        true
    })
    .unwrap();
    assert_eq!(generated, 2);
    assert!(summary.out.is_file());
    std::fs::remove_dir_all(&dir).ok();
}
