//! `specdec distill`: trains a DeepSeek-style MTP head for a target from the
//! target itself (self-distillation), and writes it as a head file
//! (`specdec_engine::models::head`) that `--drafter mtp:PATH` drafts with.
//!
//! Data flow per step: B token sequences -> the target reads each in one
//! pass (teacher forcing) giving its post-norm hidden states h_i; its
//! distribution over the token after next, restricted to the draft
//! vocabulary, is p_{i+1} = softmax(h_{i+1} W_draft^T) -> the head (candle,
//! f32) maps (h_i, token_{i+1}) to log q over the draft vocabulary -> soft
//! cross-entropy -sum p log q (KL(p || q) up to a constant) -> AdamW.
//! The target's embedding and output rows stay frozen; only the head trains.
//!
//! Deterministic for a seed: the data order, the initial noise and every
//! kernel are (candle's CPU matmul splits outputs, never sums, across
//! threads). A checkpoint (parameters, Adam moments, step) is written every
//! `checkpoint_every` steps and `resume` continues from it bit for bit.

pub mod data;
pub mod model;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use specdec_engine::models::head::{self, HeadMeta, HeadShape};
use specdec_engine::rng::Rng;
use specdec_engine::sampler::SamplingParams;
use specdec_engine::spec::controller::Controller;
use specdec_engine::spec::generate::generate_spec;
use specdec_engine::spec::suffix::SuffixDrafter;
use specdec_engine::{Loaded, LogitRows};
use specdec_gguf::{GgmlType, GgufFile, GgufWriter, Value};

use model::{Inputs, Params};

#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("training data: {0}")]
    Data(String),
    #[error(transparent)]
    Engine(#[from] specdec_engine::EngineError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("checkpoint {0}: {1}")]
    Checkpoint(String, String),
    #[error("{0}")]
    Config(String),
}

#[derive(Clone, Debug)]
pub struct DistillConfig {
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence (at most the head block's window).
    pub seq_len: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Draft vocabulary size N.
    pub draft_vocab: usize,
    pub seed: u64,
    pub checkpoint_every: usize,
    pub resume: bool,
    /// Sequences held out for the agreement figure.
    pub eval_seqs: usize,
    /// Greedy continuations of the target itself: this many sequences whose
    /// first `seq_len / 4` tokens come from the data and the rest from the
    /// target (self-distillation proper; slower than teacher forcing).
    pub self_gen: usize,
    /// Prompts for the self-generated sequences (one per line, `\n` for a
    /// line break inside a prompt) instead of openings of the data: the
    /// target continues each to `seq_len` tokens. With `self_gen` > 0 only
    /// the first `self_gen` prompts are used.
    pub self_gen_prompts: Option<PathBuf>,
    /// Depths the head is unrolled to in training (1: the first draft
    /// only; t > 1 also trains the t-th chained draft on the head's own
    /// output, EAGLE-3's training-time test). The loss weighs depth t by 1/t.
    pub depth: usize,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            data: Vec::new(),
            out: PathBuf::from("head.mtp.gguf"),
            steps: 400,
            batch: 4,
            seq_len: 256,
            lr: 5e-4,
            warmup: 20,
            weight_decay: 0.0,
            draft_vocab: 16384,
            seed: 0,
            checkpoint_every: 50,
            resume: false,
            eval_seqs: 4,
            self_gen: 0,
            self_gen_prompts: None,
            depth: 3,
        }
    }
}

/// What the progress display shows after each step.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    /// Fraction of positions where the head's top token is the target's.
    pub agree: f64,
    pub tokens_per_sec: f64,
    /// Set on evaluation steps: agreement on the held-out sequences, per
    /// unrolled depth (the first draft, then the chained ones).
    pub eval_agree: Option<Vec<f64>>,
    pub phase: &'static str,
    /// Seconds of this step in the target's passes, and in all.
    pub teacher_secs: f64,
    pub step_secs: f64,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct Summary {
    pub params: usize,
    pub draft_vocab: usize,
    pub train_seqs: usize,
    pub tokens_seen: usize,
    pub final_loss: f64,
    /// Held-out agreement per unrolled depth.
    pub eval_agree: Vec<f64>,
    pub out: PathBuf,
    pub out_bytes: u64,
}

/// One sequence's teacher data.
struct Taught {
    /// (T, d) post-norm hidden states h_0..h_{T-1}: rows 0..L feed the head,
    /// rows 1..T give the teacher (the target's logits are h W^T).
    hidden: Vec<f32>,
    /// (L, d) scaled embeddings of token_1..token_L.
    emb: Vec<f32>,
}

struct Teacher<'a> {
    target: &'a Loaded,
    shape: HeadShape,
}

impl Teacher<'_> {
    /// One prefill of the target (logits of the last row only: the teacher's
    /// distribution over the draft vocabulary comes from the hidden states).
    fn teach(&self, seq: &[u32]) -> Result<Taught, DistillError> {
        let m = &*self.target.model;
        let mut cache = m.new_cache(seq.len());
        let (_, hidden) = m.forward_hidden(&mut cache, seq, LogitRows::Last)?;
        let emb = head::embed_rows(&self.target.file, &self.shape, &seq[1..])?;
        Ok(Taught { hidden, emb })
    }
}

/// `prompt` continued by the target's greedy decoding to `len` tokens: the
/// self-generated training sequences.
pub fn self_generate(target: &Loaded, prompt: &[u32], len: usize) -> Result<Vec<u32>, DistillError> {
    // Speculative decoding with the suffix drafter: the same tokens as plain
    // greedy decoding (lossless), about twice as fast. End-of-generation
    // tokens do not stop it: every sequence is `len` tokens long.
    let m = &*target.model;
    let mut drafter = SuffixDrafter::default();
    let mut ctl = Controller::new(8);
    let params = SamplingParams::default();
    let out = generate_spec(m, &mut drafter, &mut ctl, prompt, len - prompt.len(), &params, &|_| false, &mut |_| {})?;
    let mut seq = prompt.to_vec();
    seq.extend(out.tokens);
    Ok(seq)
}

/// AdamW state of one parameter.
struct Moments {
    m: Tensor,
    v: Tensor,
}

fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt.safetensors");
    PathBuf::from(s)
}

/// Trains a head for `target` and writes it to `cfg.out`. `report` is called
/// with progress; returning false stops after the current step (checkpoint
/// and head written, so `resume` continues exactly there).
pub fn distill(
    target: &Loaded,
    cfg: &DistillConfig,
    report: &mut dyn FnMut(&StepReport) -> bool,
) -> Result<Summary, DistillError> {
    let shape = head::head_shape(&target.file)?;
    if cfg.seq_len < 8 || cfg.seq_len > shape.window {
        return Err(DistillError::Config(format!(
            "--seq-len must be in 8..={} (the head block's window)",
            shape.window
        )));
    }
    if cfg.batch == 0 || cfg.steps == 0 || cfg.draft_vocab == 0 {
        return Err(DistillError::Config("--batch, --steps and --draft-vocab must be > 0".into()));
    }
    let dev = Device::Cpu;
    let v = target.model.vocab_size();

    // Data: sequences, the draft vocabulary, a held-out set.
    let _ = report(&StepReport { phase: "tokenizing", steps: cfg.steps, ..Default::default() });
    let texts = data::read_texts(&cfg.data)?;
    let want = cfg.steps * cfg.batch + cfg.eval_seqs + cfg.self_gen;
    let mut seqs = data::sequences(&target.tokenizer, &texts, cfg.seq_len, want.max(64) * 4);
    if seqs.len() < cfg.eval_seqs + 1 {
        return Err(DistillError::Data(format!(
            "{} sequences of {} tokens; need more than the {} held out",
            seqs.len(),
            cfg.seq_len,
            cfg.eval_seqs
        )));
    }
    let mut rng = Rng::new(cfg.seed);
    for i in (1..seqs.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        seqs.swap(i, j);
    }
    let eval: Vec<Vec<u32>> = seqs.drain(..cfg.eval_seqs).collect();
    let prompts: Vec<Vec<u32>> = match &cfg.self_gen_prompts {
        Some(path) => {
            let mut p = data::read_prompts(&target.tokenizer, path, cfg.seq_len / 2)?;
            if cfg.self_gen > 0 {
                p.truncate(cfg.self_gen);
            }
            p
        }
        None => seqs.iter().take(cfg.self_gen).map(|s| s[..cfg.seq_len / 4].to_vec()).collect(),
    };
    for (i, prompt) in prompts.iter().enumerate() {
        let _ = report(&StepReport { phase: "self-generating", step: i, steps: prompts.len(), ..Default::default() });
        let cont = self_generate(target, prompt, cfg.seq_len)?;
        seqs.push(cont);
    }
    let vocab = data::draft_vocab(&seqs, cfg.draft_vocab, v);
    let teacher = Teacher { target, shape: shape.clone() };
    let n = vocab.len();
    let d = shape.n_embd;
    let out_rows = Tensor::from_vec(head::output_rows(&target.file, d, &vocab)?, (n, d), &dev)?;

    // Parameters, from the checkpoint or the target's layer.
    let layer = shape.init_layer;
    let file = &target.file;
    let init = |name: &str, dims: &[usize]| -> Result<Vec<f32>, DistillError> {
        let src = name.replacen("blk.0.", &format!("blk.{layer}."), 1);
        Ok(head::tensor_f32(file, &src, dims)?)
    };
    let params = Params::init(&shape, &init, cfg.seed, &dev)?;
    let mut moments: HashMap<String, Moments> = HashMap::new();
    for (name, var) in &params.vars {
        let t = var.as_tensor();
        moments.insert(name.clone(), Moments { m: model::zeros_like(t)?, v: model::zeros_like(t)? });
    }
    let ckpt = checkpoint_path(&cfg.out);
    let mut step0 = 0;
    if cfg.resume && ckpt.is_file() {
        step0 = load_checkpoint(&ckpt, &params, &mut moments, &vocab, &dev)?;
    }

    let l = cfg.seq_len - 1;
    let (cos, sin) = model::rope_tables(&shape, l, &dev)?;
    let depth = cfg.depth.max(1);
    let masks = model::masks(l, shape.window, depth, &dev)?;
    // Inputs, and the teacher p_{i+1} = softmax(h_{i+1} W_draft^T): the
    // target's own distribution restricted to the draft vocabulary.
    let build = |taught: &[Taught]| -> Result<(Inputs, Tensor), DistillError> {
        let b = taught.len();
        let (mut hid, mut emb) = (Vec::with_capacity(b * (l + 1) * d), Vec::with_capacity(b * l * d));
        for t in taught {
            hid.extend_from_slice(&t.hidden);
            emb.extend_from_slice(&t.emb);
        }
        let hid = Tensor::from_vec(hid, (b, l + 1, d), &dev)?;
        let next = hid.narrow(1, 1, l)?.reshape((b * l, d))?;
        let p = model::softmax(&next.matmul(&out_rows.t()?)?)?.reshape((b, l, n))?.detach();
        let inputs = Inputs {
            emb: Tensor::from_vec(emb, (b, l, d), &dev)?,
            hidden: hid.narrow(1, 0, l)?.contiguous()?,
            cos: cos.clone(),
            sin: sin.clone(),
            masks: masks.clone(),
        };
        Ok((inputs, p))
    };
    // Agreement: the head's top token equals the teacher's.
    let agreement = |logq: &Tensor, p: &Tensor| -> Result<(usize, usize), DistillError> {
        let a: Vec<u32> = logq.argmax(candle_core::D::Minus1)?.flatten_all()?.to_vec1()?;
        let b: Vec<u32> = p.argmax(candle_core::D::Minus1)?.flatten_all()?.to_vec1()?;
        Ok((a.iter().zip(&b).filter(|(x, y)| x == y).count(), a.len()))
    };
    // Rows of depth t with a chain behind them (j >= t - 1), of log q and p.
    let valid = |t: usize, x: &Tensor| -> Result<Tensor, DistillError> { Ok(x.narrow(1, t - 1, l - (t - 1))?) };
    // Held-out agreement per depth.
    let evaluate = || -> Result<Vec<f64>, DistillError> {
        let mut hits = vec![(0usize, 0usize); depth];
        for s in &eval {
            let (inputs, p) = build(&[teacher.teach(s)?])?;
            let logq = model::forward_unrolled(&params, &shape, &out_rows, &inputs, depth)?;
            for (t, lq) in logq.iter().enumerate() {
                let (h, a) = agreement(&valid(t + 1, lq)?, &valid(t + 1, &p)?)?;
                hits[t].0 += h;
                hits[t].1 += a;
            }
        }
        Ok(hits.iter().map(|&(h, a)| h as f64 / a.max(1) as f64).collect())
    };

    let mut last_loss = f64::NAN;
    let mut tokens_seen = step0 * cfg.batch * l;
    let t0 = Instant::now();
    let mut eval_agree = Vec::new();
    for step in step0..cfg.steps {
        let t_step = Instant::now();
        let taught: Vec<Taught> = (0..cfg.batch)
            .map(|j| teacher.teach(&seqs[(step * cfg.batch + j) % seqs.len()]))
            .collect::<Result<_, _>>()?;
        let t_teach = t_step.elapsed().as_secs_f64();
        let (inputs, p) = build(&taught)?;
        let logq = model::forward_unrolled(&params, &shape, &out_rows, &inputs, depth)?;
        // Depth t weighs 1/t: the first draft gates every later one.
        let mut loss = model::loss(&logq[0], &p, cfg.batch * l)?;
        for (t, lq) in logq.iter().enumerate().skip(1) {
            let rows = cfg.batch * (l - t);
            loss = (loss + (model::loss(&valid(t + 1, lq)?, &valid(t + 1, &p)?, rows)? / (t + 1) as f64)?)?;
        }
        let grads = loss.backward()?;
        let (hit, all) = agreement(&logq[0], &p)?;
        last_loss = loss.to_scalar::<f32>()? as f64;
        if !last_loss.is_finite() {
            return Err(DistillError::Config(format!("loss became {last_loss} at step {step}; lower --lr")));
        }
        // AdamW with linear warm-up and cosine decay to 10%; global-norm
        // clipping at 1.
        let lr = schedule(cfg, step);
        let mut norm2 = 0f64;
        for var in params.vars.values() {
            if let Some(g) = grads.get(var.as_tensor()) {
                norm2 += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let clip = 1.0 / (norm2.sqrt()).max(1.0);
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let t = (step + 1) as i32;
        for (name, var) in &params.vars {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = (g * clip)?;
            let mo = moments.get_mut(name).expect("moments for every parameter");
            mo.m = ((&mo.m * b1)? + (&g * (1.0 - b1))?)?;
            mo.v = ((&mo.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mh = (&mo.m / (1.0 - b1.powi(t)))?;
            let vh = (&mo.v / (1.0 - b2.powi(t)))?;
            let upd = (mh / (vh.sqrt()? + eps)?)?;
            let w = var.as_tensor();
            let decayed = (w * (1.0 - lr * cfg.weight_decay))?;
            var.set(&(decayed - (upd * lr)?)?)?;
        }
        tokens_seen += cfg.batch * l;
        let done = step + 1;
        let mut r = StepReport {
            step: done,
            steps: cfg.steps,
            loss: last_loss,
            agree: hit as f64 / all.max(1) as f64,
            tokens_per_sec: ((done - step0) * cfg.batch * l) as f64 / t0.elapsed().as_secs_f64(),
            eval_agree: None,
            phase: "training",
            teacher_secs: t_teach,
            step_secs: t_step.elapsed().as_secs_f64(),
        };
        if done % cfg.checkpoint_every == 0 || done == cfg.steps {
            eval_agree = evaluate()?;
            r.eval_agree = Some(eval_agree.clone());
            save_checkpoint(&ckpt, &params, &moments, done, &vocab)?;
            write_head(&cfg.out, &target.file, &params, &vocab, cfg, done)?;
        }
        if !report(&r) {
            // Stopped early: the head and checkpoint are as of this step.
            save_checkpoint(&ckpt, &params, &moments, done, &vocab)?;
            write_head(&cfg.out, &target.file, &params, &vocab, cfg, done)?;
            break;
        }
    }
    if step0 >= cfg.steps {
        eval_agree = evaluate()?;
        write_head(&cfg.out, &target.file, &params, &vocab, cfg, step0)?;
    }
    let out_bytes = std::fs::metadata(&cfg.out).map(|m| m.len()).unwrap_or(0);
    Ok(Summary {
        params: params.count(),
        draft_vocab: n,
        train_seqs: seqs.len(),
        tokens_seen,
        final_loss: last_loss,
        eval_agree,
        out: cfg.out.clone(),
        out_bytes,
    })
}

fn schedule(cfg: &DistillConfig, step: usize) -> f64 {
    if step < cfg.warmup {
        return cfg.lr * (step + 1) as f64 / cfg.warmup as f64;
    }
    let p = (step - cfg.warmup) as f64 / (cfg.steps - cfg.warmup).max(1) as f64;
    cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
}

fn save_checkpoint(
    path: &Path,
    params: &Params,
    moments: &HashMap<String, Moments>,
    step: usize,
    vocab: &[u32],
) -> Result<(), DistillError> {
    let dev = Device::Cpu;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in &params.vars {
        map.insert(format!("param.{name}"), var.as_tensor().clone());
        let mo = &moments[name];
        map.insert(format!("adam_m.{name}"), mo.m.clone());
        map.insert(format!("adam_v.{name}"), mo.v.clone());
    }
    map.insert("step".into(), Tensor::new(&[step as u32], &dev)?);
    map.insert("vocab".into(), Tensor::new(vocab, &dev)?);
    // Write then rename: an interrupted save never leaves half a checkpoint.
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| DistillError::Io(path.display().to_string(), e))
}

fn load_checkpoint(
    path: &Path,
    params: &Params,
    moments: &mut HashMap<String, Moments>,
    vocab: &[u32],
    dev: &Device,
) -> Result<usize, DistillError> {
    let bad = |m: String| DistillError::Checkpoint(path.display().to_string(), m);
    let map = candle_core::safetensors::load(path, dev)?;
    let saved: Vec<u32> =
        map.get("vocab").ok_or_else(|| bad("no vocab".into()))?.to_vec1().map_err(|e| bad(e.to_string()))?;
    if saved != vocab {
        return Err(bad(
            "made from other data or settings (its draft vocabulary differs); delete it or drop --resume".into()
        ));
    }
    for (name, var) in &params.vars {
        let get = |k: String| -> Result<Tensor, DistillError> {
            let t = map.get(&k).ok_or_else(|| bad(format!("{k} missing")))?;
            if t.shape() != var.as_tensor().shape() {
                return Err(bad(format!("{k} has shape {:?}", t.shape())));
            }
            Ok(t.clone())
        };
        var.set(&get(format!("param.{name}"))?)?;
        let mo = moments.get_mut(name).expect("moments for every parameter");
        mo.m = get(format!("adam_m.{name}"))?;
        mo.v = get(format!("adam_v.{name}"))?;
    }
    let step: Vec<u32> = map.get("step").ok_or_else(|| bad("no step".into()))?.to_vec1()?;
    Ok(step.first().copied().unwrap_or(0) as usize)
}

/// Writes the head file: matrices as Q8_0, norms as f32.
pub fn write_head(
    out: &Path,
    target: &GgufFile,
    params: &Params,
    vocab: &[u32],
    cfg: &DistillConfig,
    steps: usize,
) -> Result<(), DistillError> {
    let meta = HeadMeta::for_target(target, vocab.to_vec())?;
    let mut w = GgufWriter::new();
    for (k, v) in meta.to_kv() {
        w.kv(&k, v);
    }
    w.kv("specdec.head.train.steps", Value::U32(steps as u32));
    w.kv("specdec.head.train.seed", Value::U64(cfg.seed));
    w.kv("specdec.head.train.batch", Value::U32(cfg.batch as u32));
    w.kv("specdec.head.train.seq_len", Value::U32(cfg.seq_len as u32));
    // File names only: where the data sat on the training machine is noise.
    let names: Vec<String> =
        cfg.data.iter().map(|p| p.file_name().unwrap_or(p.as_os_str()).to_string_lossy().into_owned()).collect();
    w.kv("specdec.head.train.data", Value::String(names.join(", ")));
    let shape = head::head_shape(target)?;
    for (name, dims) in model::tensor_list(&shape) {
        let data: Vec<f32> = params.get(&name).flatten_all()?.to_vec1()?;
        let gd: Vec<u64> = dims.iter().map(|&x| x as u64).collect();
        if dims.len() == 2 {
            w.tensor(&name, &gd, GgmlType::Q8_0, head::quantize_q8_0(&data));
        } else {
            w.tensor(&name, &gd, GgmlType::F32, data.iter().flat_map(|x| x.to_le_bytes()).collect());
        }
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, w.to_bytes()).map_err(|e| DistillError::Io(tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, out).map_err(|e| DistillError::Io(out.display().to_string(), e))
}
