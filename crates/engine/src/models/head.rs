//! Self-distilled MTP head files (`specdec distill` writes them,
//! `--drafter mtp:PATH` reads them).
//!
//! A head has DeepSeek's MTP structure: from the target's post-norm hidden
//! state h_i and the token t_{i+1} it predicts t_{i+2}:
//!   x = eh_proj [enorm(emb(t_{i+1})); hnorm(h_i)]      (embedding first)
//!   x = one decoder block of the target's architecture (own cache, window)
//!   logits = head_rows(shared_head_norm(x))
//! The embedding and the output rows are the target's, frozen and not stored:
//! the file names its target (architecture, vocabulary size, width and a hash
//! of the embedding table) and a head for another target is refused. The head
//! scores only its draft vocabulary (`specdec.head.vocab`, the most frequent
//! tokens of its training data), so a draft step does not pay for the full
//! output layer; verification still uses the full vocabulary.
//!
//! File layout (GGUF, `general.architecture = "specdec-head"`):
//!   specdec.head.target.{architecture, vocab_size, n_embd, embedding_hash}
//!   specdec.head.vocab: u32[N] (target token ids)
//!   specdec.head.train.*: provenance (strings and numbers, informational)
//!   nextn.{enorm, hnorm, shared_head_norm}.weight [n_embd]
//!   nextn.eh_proj.weight [2 n_embd, n_embd]; blk.0.* as in the target.

use std::sync::Arc;

use specdec_gguf::{Array, GgufFile, Value};
use specdec_kernels::Pool;

use crate::spec::mtp::MtpHead;
use crate::weights::WeightSource;
use crate::EngineError;

/// `general.architecture` of a head file.
pub const HEAD_ARCH: &str = "specdec-head";

/// What a head file says about its target and its draft vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadMeta {
    pub target_arch: String,
    pub vocab_size: usize,
    pub n_embd: usize,
    pub embedding_hash: String,
    /// Target token ids the head scores, one logit each.
    pub vocab: Vec<u32>,
}

fn bad(key: &str, problem: impl Into<String>) -> EngineError {
    EngineError::Metadata { key: key.into(), problem: problem.into() }
}

impl HeadMeta {
    pub fn read(file: &GgufFile) -> Result<HeadMeta, EngineError> {
        let h = &file.header;
        let arch = h.get("general.architecture").and_then(Value::as_str).unwrap_or("");
        if arch != HEAD_ARCH {
            return Err(bad(
                "general.architecture",
                format!("{arch:?}: not a specdec head file (made by `specdec distill`)"),
            ));
        }
        let s = |k: &str| -> Result<String, EngineError> {
            h.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad(k, "missing or not a string"))
        };
        let n = |k: &str| -> Result<usize, EngineError> {
            h.get(k)
                .and_then(Value::as_u64)
                .filter(|&v| v > 0 && v <= 1 << 24)
                .map(|v| v as usize)
                .ok_or_else(|| bad(k, "missing or outside 1..=2^24"))
        };
        let vocab_size = n("specdec.head.target.vocab_size")?;
        let vocab = match h.get("specdec.head.vocab").and_then(Value::as_array) {
            Some(Array::U32(v)) => v.clone(),
            _ => return Err(bad("specdec.head.vocab", "missing or not a u32 array")),
        };
        if vocab.is_empty() {
            return Err(bad("specdec.head.vocab", "empty"));
        }
        if let Some(&t) = vocab.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(bad(
                "specdec.head.vocab",
                format!("token {t} is outside the target vocabulary of {vocab_size}"),
            ));
        }
        let mut seen = vec![false; vocab_size];
        for &t in &vocab {
            if std::mem::replace(&mut seen[t as usize], true) {
                return Err(bad("specdec.head.vocab", format!("token {t} listed twice")));
            }
        }
        Ok(HeadMeta {
            target_arch: s("specdec.head.target.architecture")?,
            vocab_size,
            n_embd: n("specdec.head.target.n_embd")?,
            embedding_hash: s("specdec.head.target.embedding_hash")?,
            vocab,
        })
    }

    /// The metadata a head for `target` carries (its draft vocabulary aside).
    pub fn for_target(target: &GgufFile, vocab: Vec<u32>) -> Result<HeadMeta, EngineError> {
        let w = WeightSource::new(target)?;
        let embd = target
            .header
            .tensor("token_embd.weight")
            .ok_or_else(|| EngineError::MissingTensor("token_embd.weight".into()))?;
        if embd.dims.len() != 2 {
            return Err(EngineError::Tensor("token_embd.weight".into(), "not a matrix".into()));
        }
        Ok(HeadMeta {
            target_arch: w.arch.clone(),
            vocab_size: embd.dims[1] as usize,
            n_embd: embd.dims[0] as usize,
            embedding_hash: embedding_hash(target)?,
            vocab,
        })
    }

    /// Refuses a head made for another model.
    pub fn check_target(&self, target: &GgufFile) -> Result<(), EngineError> {
        let want = HeadMeta::for_target(target, Vec::new())?;
        let mismatch = |what: &str, head: String, model: String| {
            Err(EngineError::Unsupported(format!(
                "this MTP head was trained for another model: its {what} is {head}, the target's is {model}"
            )))
        };
        if self.target_arch != want.target_arch {
            return mismatch("architecture", self.target_arch.clone(), want.target_arch);
        }
        if self.vocab_size != want.vocab_size {
            return mismatch("vocabulary size", self.vocab_size.to_string(), want.vocab_size.to_string());
        }
        if self.n_embd != want.n_embd {
            return mismatch("hidden size", self.n_embd.to_string(), want.n_embd.to_string());
        }
        if self.embedding_hash != want.embedding_hash {
            return mismatch("embedding hash", self.embedding_hash.clone(), want.embedding_hash);
        }
        Ok(())
    }

    /// The metadata entries of a head file, for `GgufWriter`.
    pub fn to_kv(&self) -> Vec<(String, Value)> {
        vec![
            ("general.architecture".into(), Value::String(HEAD_ARCH.into())),
            ("specdec.head.target.architecture".into(), Value::String(self.target_arch.clone())),
            ("specdec.head.target.vocab_size".into(), Value::U32(self.vocab_size as u32)),
            ("specdec.head.target.n_embd".into(), Value::U32(self.n_embd as u32)),
            ("specdec.head.target.embedding_hash".into(), Value::String(self.embedding_hash.clone())),
            ("specdec.head.vocab".into(), Value::Array(Array::U32(self.vocab.clone()))),
        ]
    }
}

/// FNV-1a (64-bit) of the embedding table's type, shape and bytes, in hex:
/// a cheap fingerprint that tells one model's embedding from another's.
pub fn embedding_hash(target: &GgufFile) -> Result<String, EngineError> {
    let t = target
        .header
        .tensor("token_embd.weight")
        .ok_or_else(|| EngineError::MissingTensor("token_embd.weight".into()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    t.ty.id().to_le_bytes().into_iter().for_each(&mut eat);
    t.dims.iter().flat_map(|d| d.to_le_bytes()).for_each(&mut eat);
    // Word-wise over the data (byte-wise FNV over 170 MB would take a second).
    let data = target.tensor_data(t);
    let mut words = data.chunks_exact(8);
    let mut w: u64 = h;
    for c in &mut words {
        w ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
        w = w.wrapping_mul(0x0100_0000_01b3);
        w ^= w >> 29;
    }
    for &b in words.remainder() {
        w ^= b as u64;
        w = w.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{w:016x}"))
}

/// Loads a head file for `target` (refusing one made for another model);
/// `force_f32` as in `LoadOptions`.
pub fn load_head(
    target: Arc<GgufFile>,
    head: &GgufFile,
    pool: Arc<Pool>,
    force_f32: bool,
) -> Result<Arc<dyn MtpHead>, EngineError> {
    let meta = HeadMeta::read(head)?;
    meta.check_target(&target)?;
    match meta.target_arch.as_str() {
        "gemma3" => Ok(Arc::new(super::gemma3::Gemma3Head::load(target, head, meta, pool, force_f32)?)),
        other => {
            Err(EngineError::Unsupported(format!("MTP heads for {other} models are not supported yet (gemma3 is)")))
        }
    }
}

/// Q8_0 blocks (32 weights: f16 scale, 32 int8) of `row`, whose length is a
/// multiple of 32: how head files store their matrices.
pub fn quantize_q8_0(row: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.len() / 32 * 34);
    for b in row.chunks(32) {
        let amax = b.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|&v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    out
}

/// What training a head for `target` needs to know of its block (the
/// target's own block shape; `specdec distill` builds the same computation).
#[derive(Clone, Debug)]
pub struct HeadShape {
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub eps: f32,
    /// Rope base and window of the head's (sliding-window) block.
    pub rope_base: f32,
    pub window: usize,
    pub attn_scale: f32,
    /// The embedding rows as the first layer sees them are scaled by this.
    pub embed_scale: f32,
    /// The target layer whose weights start the head's block.
    pub init_layer: usize,
}

/// The head's block shape for a target (Gemma 3 only, for now).
pub fn head_shape(target: &GgufFile) -> Result<HeadShape, EngineError> {
    let w = WeightSource::new(target)?;
    if w.arch != "gemma3" {
        return Err(EngineError::Unsupported(format!(
            "training MTP heads for {} models is not supported yet (gemma3 is)",
            w.arch
        )));
    }
    let (c, _) = super::gemma3::Config::read(&w)?;
    // The last sliding-window layer: the head's block is one too.
    let init_layer = (0..c.n_layers).rev().find(|&l| c.is_local(l)).unwrap_or(c.n_layers - 1);
    Ok(HeadShape {
        n_embd: c.n_embd,
        n_ff: c.n_ff,
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        head_dim: c.head_dim,
        eps: c.eps,
        rope_base: c.rope_base_local,
        window: c.window,
        attn_scale: c.attn_scale,
        embed_scale: (c.n_embd as f32).sqrt(),
        init_layer,
    })
}

/// The block's tensors (GGUF names without the `blk.N.` prefix) with their
/// GGUF dims, in file order.
pub fn block_tensors(s: &HeadShape) -> Vec<(&'static str, Vec<usize>)> {
    let (d, hd, ff) = (s.n_embd, s.head_dim, s.n_ff);
    let (q, kv) = (s.n_head * hd, s.n_head_kv * hd);
    vec![
        ("attn_norm.weight", vec![d]),
        ("attn_q_norm.weight", vec![hd]),
        ("attn_k_norm.weight", vec![hd]),
        ("attn_q.weight", vec![d, q]),
        ("attn_k.weight", vec![d, kv]),
        ("attn_v.weight", vec![d, kv]),
        ("attn_output.weight", vec![q, d]),
        ("post_attention_norm.weight", vec![d]),
        ("ffn_norm.weight", vec![d]),
        ("ffn_gate.weight", vec![d, ff]),
        ("ffn_up.weight", vec![d, ff]),
        ("ffn_down.weight", vec![ff, d]),
        ("post_ffw_norm.weight", vec![d]),
    ]
}

/// A tensor of `target` as f32 (any stored type), checked against `dims`.
pub fn tensor_f32(target: &GgufFile, name: &str, dims: &[usize]) -> Result<Vec<f32>, EngineError> {
    WeightSource::new(target)?.tensor_f32(name, dims)
}

/// Embedding rows of `ids`, scaled as the target's first layer sees them.
pub fn embed_rows(target: &GgufFile, shape: &HeadShape, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
    let embd = super::common::embedding_table(target, shape.n_embd)?;
    let mut x = super::common::embed(target, &embd, ids)?;
    x.iter_mut().for_each(|v| *v *= shape.embed_scale);
    Ok(x)
}

/// The target's output rows of `vocab` as f32 (`vocab.len()` x n_embd).
pub fn output_rows(target: &GgufFile, n_embd: usize, vocab: &[u32]) -> Result<Vec<f32>, EngineError> {
    let name = if target.header.tensor("output.weight").is_some() { "output.weight" } else { "token_embd.weight" };
    let t = target.header.tensor(name).ok_or_else(|| EngineError::MissingTensor(name.into()))?.clone();
    if t.dims.len() != 2 || t.dims[0] != n_embd as u64 {
        return Err(EngineError::TensorShape { name: name.into(), want: vec![n_embd as u64, 0], found: t.dims });
    }
    let mut out = vec![0f32; vocab.len() * n_embd];
    let n_rows = t.dims[1] as usize;
    let row_bytes = t.n_bytes as usize / n_rows;
    let data = target.tensor_data(&t);
    for (i, &id) in vocab.iter().enumerate() {
        let id = id as usize;
        if id >= n_rows {
            return Err(EngineError::TokenOutOfRange { id: id as u32, vocab: n_rows });
        }
        specdec_kernels::quant::dequantize_row(
            t.ty,
            &data[id * row_bytes..(id + 1) * row_bytes],
            &mut out[i * n_embd..(i + 1) * n_embd],
        )
        .map_err(|e| EngineError::Tensor(name.into(), e.to_string()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use specdec_gguf::GgmlType;

    #[test]
    fn q8_0_round_trip_is_within_half_a_step() {
        let mut rng = crate::rng::Rng::new(3);
        let row: Vec<f32> = (0..256).map(|i| (rng.uniform() as f32 - 0.5) * (1.0 + (i / 32) as f32)).collect();
        let q = quantize_q8_0(&row);
        assert_eq!(q.len(), 256 / 32 * 34);
        let mut back = vec![0f32; 256];
        specdec_kernels::quant::dequantize_row(GgmlType::Q8_0, &q, &mut back).unwrap();
        for (b, (x, y)) in row.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let step = amax / 127.0;
            for (u, v) in x.iter().zip(y) {
                assert!((u - v).abs() <= step * 0.5 + amax * 1e-3, "block {b}: {u} -> {v}");
            }
        }
        // An all-zero block stays zero (no division by zero).
        let z = quantize_q8_0(&[0f32; 32]);
        specdec_kernels::quant::dequantize_row(GgmlType::Q8_0, &z, &mut back[..32]).unwrap();
        assert!(back[..32].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn head_metadata_round_trips_and_rejects_bad_vocabularies() {
        let meta = HeadMeta {
            target_arch: "gemma3".into(),
            vocab_size: 300,
            n_embd: 64,
            embedding_hash: "00ff".into(),
            vocab: vec![5, 9, 2],
        };
        let write = |m: &HeadMeta| {
            let mut w = specdec_gguf::GgufWriter::new();
            for (k, v) in m.to_kv() {
                w.kv(&k, v);
            }
            GgufFile::from_bytes(w.to_bytes(), "head").unwrap()
        };
        assert_eq!(HeadMeta::read(&write(&meta)).unwrap(), meta);
        for (vocab, why) in [(vec![5, 300], "outside"), (vec![5, 5], "twice"), (vec![], "empty")] {
            let bad = HeadMeta { vocab, ..meta.clone() };
            let err = HeadMeta::read(&write(&bad)).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        // A model file is not a head.
        let model = GgufFile::from_bytes(crate::fixtures::tiny_gemma3(1, &|_, _| {}), "m").unwrap();
        assert!(HeadMeta::read(&model).unwrap_err().to_string().contains("not a specdec head"));
    }
}
