//! Hugging Face checkpoint directories (`config.json`, `*.safetensors` with an
//! optional sharded index, `tokenizer.json`, `tokenizer_config.json`),
//! converted at load time into an in-memory GGUF with llama.cpp's tensor names
//! and metadata keys, so every architecture has one loading path and the same
//! weights give the same logits from either format.
//!
//! What the conversion does, as llama.cpp's converter does it: HF names map to
//! GGUF names; Llama's q/k rows are permuted so rotation pairs are adjacent;
//! Llama 3 rope scaling becomes per-pair frequency divisors (`rope_freqs`);
//! `tokenizer.json`'s byte-level BPE becomes `tokenizer.ggml.*` (the
//! pre-tokenizer is recognised by its regex).
//!
//! Bounds: JSON files are read only up to a size limit; the safetensors crate
//! checks each header (size, offsets inside the file, no overlaps); shard
//! names must be plain file names in the directory; every dtype and shape is
//! checked before a byte is copied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use specdec_gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

use crate::EngineError;

const MAX_JSON_BYTES: u64 = 64 << 20;

fn err(file: impl Into<String>, problem: impl Into<String>) -> EngineError {
    EngineError::Checkpoint { file: file.into(), problem: problem.into() }
}

fn read_json(dir: &Path, name: &str) -> Result<Option<Json>, EngineError> {
    let path = dir.join(name);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    if meta.len() > MAX_JSON_BYTES {
        return Err(err(name, format!("{} bytes is larger than the {MAX_JSON_BYTES}-byte limit", meta.len())));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| err(name, e.to_string()))?;
    serde_json::from_str(&text).map(Some).map_err(|e| err(name, format!("invalid JSON: {e}")))
}

/// A hyperparameter from config.json.
struct Config<'a>(&'a Json);

impl Config<'_> {
    fn get(&self, key: &str) -> Option<&Json> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn uint(&self, key: &str, max: u64) -> Result<u32, EngineError> {
        self.uint_or(key, max, None)?.ok_or_else(|| err("config.json", format!("{key} is missing")))
    }
    fn uint_or(&self, key: &str, max: u64, default: Option<u32>) -> Result<Option<u32>, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(x) if x >= 1 && x <= max => Ok(Some(x as u32)),
                _ => Err(err("config.json", format!("{key} = {v} is not an integer in 1..={max}"))),
            },
        }
    }
    fn float(&self, key: &str) -> Result<Option<f32>, EngineError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x as f32)),
                _ => Err(err("config.json", format!("{key} = {v} is not a positive number"))),
            },
        }
    }
}

/// One tensor read from the checkpoint.
struct Raw {
    ty: GgmlType,
    elem: usize,
    /// PyTorch order (outermost first).
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// A tensor for the GGUF: name, dims (ggml order), type, bytes.
type Out = (String, Vec<u64>, GgmlType, Vec<u8>);

fn out(name: impl Into<String>, r: Raw) -> Out {
    (name.into(), r.shape.iter().rev().map(|&d| d as u64).collect(), r.ty, r.data)
}

/// Converts the checkpoint in `dir` into an in-memory GGUF file.
pub fn load_dir(dir: &Path) -> Result<GgufFile, EngineError> {
    let config = read_json(dir, "config.json")?.ok_or_else(|| err("config.json", "missing from the directory"))?;
    let c = Config(&config);
    let model_type = c.get("model_type").and_then(Json::as_str).unwrap_or("");
    let arch = match model_type {
        "qwen2" => "qwen2",
        "llama" | "mistral" => "llama",
        "deepseek_v3" | "deepseek_v2" => "deepseek2",
        other => return Err(EngineError::UnsupportedArch(format!("{other} (from config.json)"))),
    };
    let mut kv: Vec<(String, Value)> = vec![("general.architecture".into(), Value::String(arch.into()))];
    let vocab_size = c.uint("vocab_size", 1 << 24)? as usize;
    let tensors = read_tensors(dir)?;
    let outs = if arch == "deepseek2" {
        deepseek_tensors(&c, tensors, &mut kv)?
    } else {
        llama_tensors(&c, arch, tensors, &mut kv)?
    };
    tokenizer_metadata(dir, &config, vocab_size, &mut kv)?;
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.kv(&k, v);
    }
    for (name, dims, ty, data) in outs {
        w.tensor(&name, &dims, ty, data);
    }
    GgufFile::from_bytes(w.to_bytes(), dir).map_err(EngineError::from)
}

/// Every tensor of every shard, checked (dtype, rank, no duplicates, the
/// index's promises kept).
fn read_tensors(dir: &Path) -> Result<BTreeMap<String, Raw>, EngineError> {
    let mut all = BTreeMap::new();
    for shard in &shard_files(dir)? {
        let name = shard.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let file = std::fs::File::open(&shard.path).map_err(|e| err(&name, e.to_string()))?;
        // SAFETY: read-only mapping; see the mmap caveat in ARCHITECTURE.md.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(&name, e.to_string()))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| err(&name, format!("invalid safetensors: {e}")))?;
        if let Some(expected) = &shard.expected {
            if let Some(missing) = expected.iter().find(|t| st.tensor(t).is_err()) {
                return Err(err(&name, format!("the index places {missing} here but the shard does not hold it")));
            }
        }
        for (hf_name, view) in st.tensors() {
            let (ty, elem) = match view.dtype() {
                Dtype::F32 => (GgmlType::F32, 4),
                Dtype::F16 => (GgmlType::F16, 2),
                Dtype::BF16 => (GgmlType::BF16, 2),
                other => {
                    return Err(err(&name, format!("tensor {hf_name} has dtype {other:?} (f32, f16, bf16 supported)")))
                }
            };
            let shape = view.shape().to_vec();
            if shape.is_empty() || shape.len() > 3 || shape.contains(&0) {
                return Err(err(&name, format!("tensor {hf_name} has shape {shape:?}")));
            }
            let raw = Raw { ty, elem, shape, data: view.data().to_vec() };
            if all.insert(hf_name.clone(), raw).is_some() {
                return Err(err(&name, format!("tensor {hf_name} appears twice")));
            }
        }
    }
    if !all.contains_key("model.embed_tokens.weight") {
        return Err(err("safetensors", "model.embed_tokens.weight is missing"));
    }
    Ok(all)
}

/// Hyperparameters and tensors of Llama and Qwen2.
fn llama_tensors(
    c: &Config,
    arch: &str,
    tensors: BTreeMap<String, Raw>,
    kv: &mut Vec<(String, Value)>,
) -> Result<Vec<Out>, EngineError> {
    let mut put = |key: &str, v: Value| kv.push((format!("{arch}.{key}"), v));
    let n_head = c.uint("num_attention_heads", 1024)?;
    let n_head_kv = c.uint_or("num_key_value_heads", 1024, Some(n_head))?.unwrap_or(n_head);
    let n_embd = c.uint("hidden_size", 1 << 16)?;
    let n_layers = c.uint("num_hidden_layers", 512)?;
    let head_dim = c.uint_or("head_dim", 4096, None)?.unwrap_or(n_embd / n_head);
    put("context_length", Value::U32(c.uint("max_position_embeddings", 1 << 24)?));
    put("embedding_length", Value::U32(n_embd));
    put("block_count", Value::U32(n_layers));
    put("feed_forward_length", Value::U32(c.uint("intermediate_size", 1 << 20)?));
    put("attention.head_count", Value::U32(n_head));
    put("attention.head_count_kv", Value::U32(n_head_kv));
    put("attention.key_length", Value::U32(head_dim));
    put("attention.value_length", Value::U32(head_dim));
    put("rope.dimension_count", Value::U32(head_dim));
    if let Some(eps) = c.float("rms_norm_eps")? {
        put("attention.layer_norm_rms_epsilon", Value::F32(eps));
    }
    let (rope, rope_theta) = rope_params(c)?;
    put("rope.freq_base", Value::F32(rope_theta));
    let rope_type = rope.get("rope_type").or_else(|| rope.get("type")).and_then(Json::as_str).unwrap_or("default");
    let mut outs = Vec::new();
    match rope_type {
        "default" => {}
        "llama3" => {
            let f = llama3_factors(&rope, head_dim as usize, rope_theta)?;
            outs.push((
                "rope_freqs.weight".to_string(),
                vec![f.len() as u64],
                GgmlType::F32,
                f.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        other => return Err(err("config.json", format!("rope scaling {other:?} is not supported for {arch}"))),
    }
    let tied = c.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false);
    for (hf_name, mut raw) in tensors {
        let Some(gguf_name) = gguf_name(&hf_name) else { continue };
        if gguf_name == "output.weight" && tied {
            continue;
        }
        if raw.shape.len() > 2 {
            return Err(err("safetensors", format!("tensor {hf_name} has shape {:?}", raw.shape)));
        }
        // HF rotates pairs (i, i + d/2) in each head; GGUF llama expects adjacent pairs.
        if arch == "llama" {
            let heads = if gguf_name.ends_with("attn_q.weight") || gguf_name.ends_with("attn_q.bias") {
                Some(n_head)
            } else if gguf_name.ends_with("attn_k.weight") || gguf_name.ends_with("attn_k.bias") {
                Some(n_head_kv)
            } else {
                None
            };
            if let Some(h) = heads {
                let row = if raw.shape.len() == 2 { raw.shape[1] * raw.elem } else { raw.elem };
                raw.data = permute_rope_rows(&raw.data, h as usize, raw.shape[0], row).ok_or_else(|| {
                    err(
                        "safetensors",
                        format!("tensor {hf_name}: {} rows do not split into {h} heads of even size", raw.shape[0]),
                    )
                })?;
            }
        }
        outs.push(out(gguf_name, raw));
    }
    Ok(outs)
}

/// (rope settings object, rope_theta): transformers 5 nests them in
/// rope_parameters; 4.x has rope_theta and rope_scaling at the top level.
fn rope_params(c: &Config) -> Result<(Json, f32), EngineError> {
    let rope = c.get("rope_parameters").or_else(|| c.get("rope_scaling")).cloned().unwrap_or(Json::Null);
    let theta = match rope.get("rope_theta") {
        Some(_) => Config(&rope).float("rope_theta")?,
        None => c.float("rope_theta")?,
    }
    .unwrap_or(10_000.0);
    Ok((rope, theta))
}

/// Hyperparameters and tensors of DeepSeek-V3 (and V2) in llama.cpp's
/// `deepseek2` layout: kv_b_proj split into per-head k_b (transposed) and
/// v_b, experts stacked, the router bias as `exp_probs_b`.
fn deepseek_tensors(
    c: &Config,
    mut tensors: BTreeMap<String, Raw>,
    kv: &mut Vec<(String, Value)>,
) -> Result<Vec<Out>, EngineError> {
    let mut put = |key: &str, v: Value| kv.push((format!("deepseek2.{key}"), v));
    let n_head = c.uint("num_attention_heads", 1024)? as usize;
    let n_layers = c.uint("num_hidden_layers", 512)?;
    let dn = c.uint("qk_nope_head_dim", 8192)? as usize;
    let dr = c.uint("qk_rope_head_dim", 8192)? as usize;
    let dv = c.uint("v_head_dim", 8192)? as usize;
    let lkv = c.uint("kv_lora_rank", 1 << 16)? as usize;
    let lq = c.uint_or("q_lora_rank", 1 << 16, None)?;
    // MTP modules follow the main layers (model.layers.{n_layers}..); they are
    // carried as blk.{n}.nextn.* plus an ordinary layer, block_count counting them.
    let n_nextn = (0..c.uint_or("num_nextn_predict_layers", 8, Some(0))?.unwrap_or(0))
        .take_while(|j| tensors.contains_key(&format!("model.layers.{}.eh_proj.weight", n_layers + j)))
        .count() as u32;
    put("context_length", Value::U32(c.uint("max_position_embeddings", 1 << 24)?));
    put("embedding_length", Value::U32(c.uint("hidden_size", 1 << 16)?));
    put("block_count", Value::U32(n_layers + n_nextn));
    if n_nextn > 0 {
        put("nextn_predict_layers", Value::U32(n_nextn));
    }
    put("feed_forward_length", Value::U32(c.uint("intermediate_size", 1 << 20)?));
    put("attention.head_count", Value::U32(n_head as u32));
    put("attention.head_count_kv", Value::U32(1));
    put("attention.key_length", Value::U32((lkv + dr) as u32));
    put("attention.value_length", Value::U32(lkv as u32));
    put("attention.key_length_mla", Value::U32((dn + dr) as u32));
    put("attention.value_length_mla", Value::U32(dv as u32));
    put("attention.kv_lora_rank", Value::U32(lkv as u32));
    if let Some(q) = lq {
        put("attention.q_lora_rank", Value::U32(q));
    }
    put("rope.dimension_count", Value::U32(dr as u32));
    if let Some(eps) = c.float("rms_norm_eps")? {
        put("attention.layer_norm_rms_epsilon", Value::F32(eps));
    }
    let (rope, theta) = rope_params(c)?;
    put("rope.freq_base", Value::F32(theta));
    match rope.get("rope_type").or_else(|| rope.get("type")).and_then(Json::as_str).unwrap_or("default") {
        "default" => {}
        "yarn" => {
            let r = Config(&rope);
            let factor = r.float("factor")?.ok_or_else(|| err("config.json", "yarn rope scaling needs factor"))?;
            put("rope.scaling.type", Value::String("yarn".into()));
            put("rope.scaling.factor", Value::F32(factor));
            put(
                "rope.scaling.original_context_length",
                Value::U32(r.uint("original_max_position_embeddings", 1 << 24)?),
            );
            put("rope.scaling.yarn_log_multiplier", Value::F32(0.1 * r.float("mscale_all_dim")?.unwrap_or(0.0)));
            put("rope.scaling.yarn_beta_fast", Value::F32(r.float("beta_fast")?.unwrap_or(32.0)));
            put("rope.scaling.yarn_beta_slow", Value::F32(r.float("beta_slow")?.unwrap_or(1.0)));
            let (m, mad) = (r.float("mscale")?.unwrap_or(1.0), r.float("mscale_all_dim")?.unwrap_or(0.0));
            if m != mad && mad != 0.0 {
                return Err(err("config.json", "yarn with mscale != mscale_all_dim (scaled cos/sin) is not supported"));
            }
        }
        other => return Err(err("config.json", format!("rope scaling {other:?} is not supported for deepseek"))),
    }
    let n_dense = c.uint_or("first_k_dense_replace", 512, Some(0))?.unwrap_or(0);
    let n_expert = c.uint("n_routed_experts", 4096)? as usize;
    put("leading_dense_block_count", Value::U32(n_dense));
    put("expert_count", Value::U32(n_expert as u32));
    put("expert_used_count", Value::U32(c.uint("num_experts_per_tok", 4096)?));
    put("expert_shared_count", Value::U32(c.uint_or("n_shared_experts", 64, Some(0))?.unwrap_or(0)));
    put("expert_feed_forward_length", Value::U32(c.uint("moe_intermediate_size", 1 << 20)?));
    put("expert_weights_scale", Value::F32(c.float("routed_scaling_factor")?.unwrap_or(1.0)));
    put("expert_weights_norm", Value::Bool(c.get("norm_topk_prob").and_then(Json::as_bool).unwrap_or(false)));
    let gating = match c.get("scoring_func").and_then(Json::as_str).unwrap_or("sigmoid") {
        "softmax" => 1,
        "sigmoid" => 2,
        other => return Err(err("config.json", format!("scoring_func {other:?} is not supported"))),
    };
    put("expert_gating_func", Value::U32(gating));
    put("expert_group_count", Value::U32(c.uint_or("n_group", 4096, Some(1))?.unwrap_or(1)));
    put("expert_group_used_count", Value::U32(c.uint_or("topk_group", 4096, Some(1))?.unwrap_or(1)));

    let mut take = |name: &str| tensors.remove(name).ok_or_else(|| EngineError::MissingTensor(name.to_string()));
    let mut outs = vec![
        out("token_embd.weight", take("model.embed_tokens.weight")?),
        out("output_norm.weight", take("model.norm.weight")?),
        out("output.weight", take("lm_head.weight")?),
    ];
    for i in 0..(n_layers + n_nextn) as usize {
        let hf = |s: &str| format!("model.layers.{i}.{s}");
        let gg = |s: &str| format!("blk.{i}.{s}");
        if i >= n_layers as usize {
            for (h, g) in [
                ("enorm.weight", "nextn.enorm.weight"),
                ("hnorm.weight", "nextn.hnorm.weight"),
                ("eh_proj.weight", "nextn.eh_proj.weight"),
                ("shared_head.norm.weight", "nextn.shared_head_norm.weight"),
            ] {
                outs.push(out(gg(g), take(&hf(h))?));
            }
            // Copies of the main embedding and head in DeepSeek's checkpoints: the main ones serve.
            take(&hf("embed_tokens.weight")).ok();
            take(&hf("shared_head.head.weight")).ok();
        }
        for (h, g) in [
            ("input_layernorm.weight", "attn_norm.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
            ("self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"),
            ("self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
        ] {
            outs.push(out(gg(g), take(&hf(h))?));
        }
        if lq.is_some() {
            outs.push(out(gg("attn_q_a.weight"), take(&hf("self_attn.q_a_proj.weight"))?));
            outs.push(out(gg("attn_q_a_norm.weight"), take(&hf("self_attn.q_a_layernorm.weight"))?));
            outs.push(out(gg("attn_q_b.weight"), take(&hf("self_attn.q_b_proj.weight"))?));
        } else {
            outs.push(out(gg("attn_q.weight"), take(&hf("self_attn.q_proj.weight"))?));
        }
        // kv_b_proj [H (dn + dv), Lkv]: per head k rows (transposed to [Lkv, dn]) and v rows.
        let kvb = take(&hf("self_attn.kv_b_proj.weight"))?;
        if kvb.shape != [n_head * (dn + dv), lkv] {
            return Err(EngineError::TensorShape {
                name: hf("self_attn.kv_b_proj.weight"),
                want: vec![(n_head * (dn + dv)) as u64, lkv as u64],
                found: kvb.shape.iter().map(|&d| d as u64).collect(),
            });
        }
        let e = kvb.elem;
        let (mut kb, mut vb) = (Vec::with_capacity(n_head * dn * lkv * e), Vec::with_capacity(n_head * dv * lkv * e));
        for h in 0..n_head {
            let head = &kvb.data[h * (dn + dv) * lkv * e..(h + 1) * (dn + dv) * lkv * e];
            for col in 0..lkv {
                for row in 0..dn {
                    kb.extend_from_slice(&head[(row * lkv + col) * e..(row * lkv + col + 1) * e]);
                }
            }
            vb.extend_from_slice(&head[dn * lkv * e..]);
        }
        outs.push((gg("attn_k_b.weight"), vec![dn as u64, lkv as u64, n_head as u64], kvb.ty, kb));
        outs.push((gg("attn_v_b.weight"), vec![lkv as u64, dv as u64, n_head as u64], kvb.ty, vb));
        if i < n_dense as usize {
            for (h, g) in [("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")] {
                outs.push(out(gg(&format!("{g}.weight")), take(&hf(&format!("{h}.weight")))?));
            }
            continue;
        }
        outs.push(out(gg("ffn_gate_inp.weight"), take(&hf("mlp.gate.weight"))?));
        if let Ok(b) = take(&hf("mlp.gate.e_score_correction_bias")) {
            outs.push(out(gg("exp_probs_b.bias"), b));
        }
        for (h, g) in [("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")] {
            if let Ok(t) = take(&hf(&format!("mlp.shared_experts.{h}.weight"))) {
                outs.push(out(gg(&format!("{g}.weight")), t));
            }
        }
        for (h, g) in [("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")] {
            let mut data = Vec::new();
            let (mut ty, mut shape) = (GgmlType::F32, Vec::new());
            for j in 0..n_expert {
                let name = hf(&format!("mlp.experts.{j}.{h}.weight"));
                let t = take(&name)?;
                if t.shape.len() != 2 || (j > 0 && (t.shape != shape || t.ty != ty)) {
                    return Err(err("safetensors", format!("{name}: experts differ in shape or dtype")));
                }
                (ty, shape) = (t.ty, t.shape.clone());
                data.extend_from_slice(&t.data);
            }
            let dims = vec![shape[1] as u64, shape[0] as u64, n_expert as u64];
            outs.push((gg(&format!("{g}.weight")), dims, ty, data));
        }
    }
    Ok(outs)
}

/// A safetensors file of the checkpoint and, for shards of an index, the
/// tensors the index says it holds.
struct Shard {
    path: PathBuf,
    expected: Option<BTreeSet<String>>,
}

/// The safetensors files of the checkpoint: the shards named by
/// `model.safetensors.index.json`, or `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<Shard>, EngineError> {
    let index = "model.safetensors.index.json";
    if let Some(ix) = read_json(dir, index)? {
        let map = ix.get("weight_map").and_then(Json::as_object).ok_or_else(|| err(index, "weight_map is missing"))?;
        let mut files: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for (tensor, v) in map {
            let f = v.as_str().ok_or_else(|| err(index, format!("shard {v} is not a file name")))?;
            // A shard must be a plain name inside the directory.
            if f.is_empty() || f.contains(['/', '\\', ':']) || f == ".." || f == "." {
                return Err(err(index, format!("shard {f:?} is not a plain file name")));
            }
            files.entry(f.to_string()).or_default().insert(tensor.clone());
        }
        return Ok(files.into_iter().map(|(f, names)| Shard { path: dir.join(f), expected: Some(names) }).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        Ok(vec![Shard { path: single, expected: None }])
    } else {
        Err(err("model.safetensors", "no model.safetensors or model.safetensors.index.json in the directory"))
    }
}

/// llama.cpp's tensor name for a HF tensor name (None: not used for inference).
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, sub) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let name = match sub {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}"))
}

/// Reorders the rows of each head from (i, i + d/2) pairs to adjacent pairs:
/// new row 2i = old row i, new row 2i + 1 = old row d/2 + i.
fn permute_rope_rows(data: &[u8], n_head: usize, rows: usize, row_bytes: usize) -> Option<Vec<u8>> {
    if n_head == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
        || data.len() != rows * row_bytes
    {
        return None;
    }
    let hd = rows / n_head;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for (new, old) in [(2 * i, i), (2 * i + 1, hd / 2 + i)] {
                let (dst, src) = ((h * hd + new) * row_bytes, (h * hd + old) * row_bytes);
                out[dst..dst + row_bytes].copy_from_slice(&data[src..src + row_bytes]);
            }
        }
    }
    Some(out)
}

/// Llama 3's rope scaling as per-pair divisors of the angle (computed in f64,
/// as llama.cpp's converter does, then stored as f32).
fn llama3_factors(rope: &Json, head_dim: usize, base: f32) -> Result<Vec<f32>, EngineError> {
    let r = Config(rope);
    let need = |k: &str| -> Result<f64, EngineError> {
        let v = r.float(k)?.ok_or_else(|| err("config.json", format!("llama3 rope scaling needs {k}")))?;
        Ok(rope.get(k).and_then(Json::as_f64).unwrap_or(v as f64))
    };
    let (factor, lo, hi, old) = (
        need("factor")?,
        need("low_freq_factor")?,
        need("high_freq_factor")?,
        need("original_max_position_embeddings")?,
    );
    if hi <= lo {
        return Err(err("config.json", "high_freq_factor must exceed low_freq_factor"));
    }
    let base = rope.get("rope_theta").and_then(Json::as_f64).unwrap_or(base as f64);
    let (lo_wl, hi_wl) = (old / lo, old / hi);
    Ok((0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f64 / head_dim as f64);
            let wl = 2.0 * std::f64::consts::PI / freq;
            let f = if wl < hi_wl {
                1.0
            } else if wl > lo_wl {
                factor
            } else {
                let s = (old / wl - lo) / (hi - lo);
                1.0 / ((1.0 - s) / factor + s)
            };
            f as f32
        })
        .collect())
}

/// `tokenizer.json` (byte-level BPE) and `tokenizer_config.json` into
/// `tokenizer.ggml.*` metadata.
fn tokenizer_metadata(
    dir: &Path,
    config: &Json,
    vocab_size: usize,
    kv: &mut Vec<(String, Value)>,
) -> Result<(), EngineError> {
    const F: &str = "tokenizer.json";
    let tj = read_json(dir, F)?.ok_or_else(|| err(F, "missing from the directory"))?;
    let tc = read_json(dir, "tokenizer_config.json")?.unwrap_or(Json::Null);
    let model = tj.get("model").ok_or_else(|| err(F, "model is missing"))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err(err(
            F,
            format!("model type {} is not supported (BPE only)", model.get("type").unwrap_or(&Json::Null)),
        ));
    }
    let vocab = model.get("vocab").and_then(Json::as_object).ok_or_else(|| err(F, "model.vocab is missing"))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut set = |id: u64, text: &str| -> Result<(), EngineError> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            err(F, format!("token {text:?} has id {id}, outside the model's vocabulary of {vocab_size}"))
        })?;
        *slot = Some(text.to_string());
        Ok(())
    };
    for (text, id) in vocab {
        set(id.as_u64().ok_or_else(|| err(F, format!("vocab id of {text:?} is not an integer")))?, text)?;
    }
    let mut special = HashMap::new();
    for a in tj.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let (Some(id), Some(text)) = (a.get("id").and_then(Json::as_u64), a.get("content").and_then(Json::as_str))
        else {
            return Err(err(F, "an added token lacks id or content"));
        };
        set(id, text)?;
        special.insert(id as usize, a.get("special").and_then(Json::as_bool).unwrap_or(false));
    }
    let mut types = Vec::with_capacity(vocab_size);
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            types.push(match (&t, special.get(&i)) {
                (None, _) => 5,        // unused
                (_, Some(true)) => 3,  // control
                (_, Some(false)) => 4, // user defined
                (_, None) => 1,        // normal
            });
            t.unwrap_or_else(|| format!("[PAD{i}]"))
        })
        .collect();
    let merges: Vec<String> = match model.get("merges").and_then(Json::as_array) {
        Some(m) => m
            .iter()
            .map(|x| match x {
                Json::String(s) => Ok(s.clone()),
                Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => {
                    Ok(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")))
                }
                _ => Err(err(F, format!("merge {x} is not a pair"))),
            })
            .collect::<Result<_, _>>()?,
        None => return Err(err(F, "model.merges is missing")),
    };
    let pre = pre_tokenizer_name(tj.get("pre_tokenizer").unwrap_or(&Json::Null))?;
    kv.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
    kv.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
    kv.push(("tokenizer.ggml.tokens".into(), Value::Array(Array::String(tokens))));
    kv.push(("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(types))));
    kv.push(("tokenizer.ggml.merges".into(), Value::Array(Array::String(merges))));
    let id_of = |v: Option<&Json>| -> Option<u32> {
        match v? {
            Json::Number(n) => n.as_u64().map(|x| x as u32),
            Json::Array(a) => a.first().and_then(Json::as_u64).map(|x| x as u32),
            _ => None,
        }
    };
    let bos = id_of(config.get("bos_token_id"));
    if let Some(b) = bos {
        kv.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(e) = id_of(config.get("eos_token_id")) {
        kv.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    // Whether encoding starts with BOS: tokenizer_config's flag, else whether
    // the post-processor's template starts with a special token.
    let add_bos = match tc.get("add_bos_token").and_then(Json::as_bool) {
        Some(b) => b,
        None => {
            let pp = tj.get("post_processor").unwrap_or(&Json::Null);
            let single = pp.get("single").and_then(Json::as_array).and_then(|s| s.first());
            bos.is_some() && single.is_some_and(|s| s.get("SpecialToken").is_some())
        }
    };
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos && bos.is_some())));
    if let Some(t) = tc.get("chat_template").and_then(Json::as_str) {
        kv.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    Ok(())
}

/// The GGUF pre-tokenizer name of tokenizer.json's pre_tokenizer: a Split by
/// a known regex followed by ByteLevel without its own regex, or plain
/// ByteLevel with GPT-2's.
fn pre_tokenizer_name(pt: &Json) -> Result<&'static str, EngineError> {
    let steps: Vec<&Json> = match pt.get("type").and_then(Json::as_str) {
        Some("Sequence") => {
            pt.get("pretokenizers").and_then(Json::as_array).map(|v| v.iter().collect()).unwrap_or_default()
        }
        Some(_) => vec![pt],
        None => vec![],
    };
    let kind = |s: &Json| s.get("type").and_then(Json::as_str).unwrap_or("").to_string();
    match steps.as_slice() {
        [split, bl] if kind(split) == "Split" && kind(bl) == "ByteLevel" => {
            let pat = split.get("pattern").and_then(|p| p.get("Regex")).and_then(Json::as_str).unwrap_or("");
            specdec_tokenizer::pre_for_pattern(pat)
                .ok_or_else(|| err("tokenizer.json", format!("pre-tokenizer regex {pat:?} is not one specdec knows")))
        }
        [bl] if kind(bl) == "ByteLevel" && bl.get("use_regex").and_then(Json::as_bool).unwrap_or(true) => Ok("gpt2"),
        _ => Err(err("tokenizer.json", format!("pre-tokenizer {pt} is not supported (byte-level BPE only)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_interleaves_halves() {
        // 2 heads of 4 rows, 1 byte per row: head rows [a0 a1 b0 b1] -> [a0 b0 a1 b1].
        let data: Vec<u8> = (0..8).collect();
        assert_eq!(permute_rope_rows(&data, 2, 8, 1).unwrap(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert!(permute_rope_rows(&data, 3, 8, 1).is_none());
    }

    #[test]
    fn names_map_and_unknown_names_are_skipped() {
        assert_eq!(gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(), Some("blk.12.ffn_down.weight"));
        assert_eq!(gguf_name("model.layers.x.mlp.down_proj.weight"), None);
        assert_eq!(gguf_name("model.rotary_emb.inv_freq"), None);
    }
}
