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

use std::collections::{BTreeSet, HashMap};
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

/// Converts the checkpoint in `dir` into an in-memory GGUF file.
pub fn load_dir(dir: &Path) -> Result<GgufFile, EngineError> {
    let config = read_json(dir, "config.json")?.ok_or_else(|| err("config.json", "missing from the directory"))?;
    let c = Config(&config);
    let model_type = c.get("model_type").and_then(Json::as_str).unwrap_or("");
    let arch = match model_type {
        "qwen2" => "qwen2",
        "llama" | "mistral" => "llama",
        other => return Err(EngineError::UnsupportedArch(format!("{other} (from config.json)"))),
    };
    let mut kv: Vec<(String, Value)> = vec![("general.architecture".into(), Value::String(arch.into()))];
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
    // transformers 5 nests rope settings in rope_parameters; 4.x has rope_theta
    // and rope_scaling at the top level.
    let rope = c.get("rope_parameters").or_else(|| c.get("rope_scaling")).cloned().unwrap_or(Json::Null);
    let rope_theta = match rope.get("rope_theta") {
        Some(v) => Config(&rope).float("rope_theta").map(|_| v.as_f64().map(|x| x as f32))?,
        None => c.float("rope_theta")?,
    }
    .unwrap_or(10_000.0);
    put("rope.freq_base", Value::F32(rope_theta));
    let rope_type = rope.get("rope_type").or_else(|| rope.get("type")).and_then(Json::as_str).unwrap_or("default");
    let rope_freqs = match rope_type {
        "default" => None,
        "llama3" => Some(llama3_factors(&rope, head_dim as usize, rope_theta)?),
        other => return Err(err("config.json", format!("rope scaling {other:?} is not supported for {arch}"))),
    };
    let tied = c.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false);

    let vocab_size = c.uint("vocab_size", 1 << 24)? as usize;
    tokenizer_metadata(dir, &config, vocab_size, &mut kv)?;

    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.kv(&k, v);
    }
    if let Some(f) = rope_freqs {
        w.tensor(
            "rope_freqs.weight",
            &[f.len() as u64],
            GgmlType::F32,
            f.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
    }
    let shards = shard_files(dir)?;
    let mut seen = BTreeSet::new();
    for shard in &shards {
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
            let Some(gguf_name) = gguf_name(&hf_name) else { continue };
            if gguf_name == "output.weight" && tied {
                continue;
            }
            if !seen.insert(gguf_name.clone()) {
                return Err(err(&name, format!("tensor {hf_name} appears twice")));
            }
            let (ty, elem) = match view.dtype() {
                Dtype::F32 => (GgmlType::F32, 4),
                Dtype::F16 => (GgmlType::F16, 2),
                Dtype::BF16 => (GgmlType::BF16, 2),
                other => {
                    return Err(err(&name, format!("tensor {hf_name} has dtype {other:?} (f32, f16, bf16 supported)")))
                }
            };
            let shape = view.shape();
            if shape.is_empty() || shape.len() > 2 || shape.contains(&0) {
                return Err(err(&name, format!("tensor {hf_name} has shape {shape:?}")));
            }
            let mut data = view.data().to_vec();
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
                    let row = if shape.len() == 2 { shape[1] * elem } else { elem };
                    data = permute_rope_rows(&data, h as usize, shape[0], row).ok_or_else(|| {
                        err(
                            &name,
                            format!("tensor {hf_name}: {} rows do not split into {h} heads of even size", shape[0]),
                        )
                    })?;
                }
            }
            let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            w.tensor(&gguf_name, &dims, ty, data);
        }
    }
    if !seen.contains("token_embd.weight") {
        return Err(err("safetensors", "model.embed_tokens.weight is missing"));
    }
    GgufFile::from_bytes(w.to_bytes(), dir).map_err(EngineError::from)
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
