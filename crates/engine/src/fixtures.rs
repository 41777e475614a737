//! Tiny random-weight models for tests (of this crate and its users): small
//! enough to build in microseconds, real enough to exercise every code path.

use specdec_gguf::{Array, GgmlType, GgufWriter, Value};

/// (name, dims, type, bytes) of a tensor to write.
pub type TensorSpec = (String, Vec<u64>, GgmlType, Vec<u8>);
/// Edits the metadata and tensors before writing.
pub type Edit<'a> = &'a dyn Fn(&mut Vec<(String, Value)>, &mut Vec<TensorSpec>);

/// Tiny random-weight Gemma 3 as GGUF bytes: 3 layers, hidden 64, 2 heads of
/// 32, 1 KV head, window 8, a 300-token vocabulary with byte tokens.
/// `edit` may change the metadata and tensors before writing.
pub fn tiny_gemma3(seed: u64, edit: Edit) -> Vec<u8> {
    let (d, l, ff, nh, hd, vocab) = (64u64, 3u64, 128u64, 2u64, 32u64, 300u64);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut tokens: Vec<String> =
        vec!["<pad>".into(), "<eos>".into(), "<bos>".into(), "<unk>".into(), "<end_of_turn>".into()];
    let mut types = vec![3i32, 3, 3, 2, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for w in ["\u{2581}", "a", "b", "c", "ab", "\u{2581}a", "abc", "he", "llo", "hello", "\u{2581}hello"] {
        tokens.push(w.into());
        types.push(1);
    }
    while (tokens.len() as u64) < vocab {
        tokens.push(format!("w{}", tokens.len()));
        types.push(1);
    }
    let scores: Vec<f32> = (0..vocab).map(|i| -(i as f32)).collect();
    let mut kv: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("gemma3".into())),
        ("gemma3.context_length".into(), Value::U32(256)),
        ("gemma3.embedding_length".into(), Value::U32(d as u32)),
        ("gemma3.block_count".into(), Value::U32(l as u32)),
        ("gemma3.feed_forward_length".into(), Value::U32(ff as u32)),
        ("gemma3.attention.head_count".into(), Value::U32(nh as u32)),
        ("gemma3.attention.head_count_kv".into(), Value::U32(1)),
        ("gemma3.attention.key_length".into(), Value::U32(hd as u32)),
        ("gemma3.attention.value_length".into(), Value::U32(hd as u32)),
        ("gemma3.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-6)),
        ("gemma3.rope.freq_base".into(), Value::F32(1e6)),
        ("gemma3.attention.sliding_window".into(), Value::U32(8)),
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.scores".into(), Value::Array(Array::F32(scores))),
        ("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(types))),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
    ];
    let mut t: Vec<TensorSpec> = Vec::new();
    let f32t = |name: &str, n: u64, base: f32, t: &mut Vec<_>, rnd: &mut dyn FnMut() -> f32| {
        let v: Vec<u8> = (0..n).flat_map(|_| (base + 0.1 * rnd()).to_le_bytes()).collect();
        t.push((name.to_string(), vec![n], GgmlType::F32, v));
    };
    let q8 = |name: &str, k: u64, n: u64, t: &mut Vec<_>, rnd: &mut dyn FnMut() -> f32| {
        let mut v = Vec::new();
        for _ in 0..(k * n / 32) {
            v.extend_from_slice(&half::f16::from_f32(0.02 / 127.0 * 40.0).to_bits().to_le_bytes());
            for _ in 0..32 {
                v.push(((rnd() * 127.0) as i8) as u8);
            }
        }
        t.push((name.to_string(), vec![k, n], GgmlType::Q8_0, v));
    };
    q8("token_embd.weight", d, vocab, &mut t, &mut rnd);
    f32t("output_norm.weight", d, 1.0, &mut t, &mut rnd);
    for i in 0..l {
        let p = |s: &str| format!("blk.{i}.{s}");
        f32t(&p("attn_norm.weight"), d, 1.0, &mut t, &mut rnd);
        f32t(&p("attn_q_norm.weight"), hd, 1.0, &mut t, &mut rnd);
        f32t(&p("attn_k_norm.weight"), hd, 1.0, &mut t, &mut rnd);
        q8(&p("attn_q.weight"), d, nh * hd, &mut t, &mut rnd);
        q8(&p("attn_k.weight"), d, hd, &mut t, &mut rnd);
        q8(&p("attn_v.weight"), d, hd, &mut t, &mut rnd);
        q8(&p("attn_output.weight"), nh * hd, d, &mut t, &mut rnd);
        f32t(&p("post_attention_norm.weight"), d, 1.0, &mut t, &mut rnd);
        f32t(&p("ffn_norm.weight"), d, 1.0, &mut t, &mut rnd);
        q8(&p("ffn_gate.weight"), d, ff, &mut t, &mut rnd);
        q8(&p("ffn_up.weight"), d, ff, &mut t, &mut rnd);
        q8(&p("ffn_down.weight"), ff, d, &mut t, &mut rnd);
        f32t(&p("post_ffw_norm.weight"), d, 1.0, &mut t, &mut rnd);
    }
    edit(&mut kv, &mut t);
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.kv(&k, v);
    }
    for (name, dims, ty, data) in t {
        w.tensor(&name, &dims, ty, data);
    }
    w.to_bytes()
}

/// A random-weight MTP head file for `target` (a Gemma 3 model) scoring
/// `vocab`, as GGUF bytes: real enough to draft (badly) through every code
/// path of `--drafter mtp:PATH`.
pub fn random_head(target: &specdec_gguf::GgufFile, vocab: Vec<u32>, seed: u64) -> Result<Vec<u8>, crate::EngineError> {
    use crate::models::head::{block_tensors, head_shape, quantize_q8_0, HeadMeta};
    let shape = head_shape(target)?;
    let d = shape.n_embd;
    let mut rng = crate::rng::Rng::new(seed);
    let mut w = GgufWriter::new();
    for (k, v) in HeadMeta::for_target(target, vocab)?.to_kv() {
        w.kv(&k, v);
    }
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("nextn.enorm.weight".into(), vec![d]),
        ("nextn.hnorm.weight".into(), vec![d]),
        ("nextn.eh_proj.weight".into(), vec![2 * d, d]),
    ];
    tensors.extend(block_tensors(&shape).into_iter().map(|(n, dims)| (format!("blk.0.{n}"), dims)));
    tensors.push(("nextn.shared_head_norm.weight".into(), vec![d]));
    for (name, dims) in tensors {
        let n: usize = dims.iter().product();
        let gd: Vec<u64> = dims.iter().map(|&x| x as u64).collect();
        if dims.len() == 2 {
            let scale = 1.0 / (dims[0] as f32).sqrt();
            let v: Vec<f32> = (0..n).map(|_| (rng.uniform() as f32 * 2.0 - 1.0) * scale).collect();
            w.tensor(&name, &gd, GgmlType::Q8_0, quantize_q8_0(&v));
        } else {
            let v: Vec<f32> = (0..n).map(|_| 0.5 + rng.uniform() as f32).collect();
            w.tensor(&name, &gd, GgmlType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect());
        }
    }
    Ok(w.to_bytes())
}

/// A loaded tiny Gemma 3 (`tiny_gemma3(seed)`) and a random-weight MTP head
/// for it over its whole vocabulary, for drafter tests.
pub fn tiny_gemma3_with_head(
    seed: u64,
    head_seed: u64,
) -> (crate::Loaded, std::sync::Arc<dyn crate::spec::mtp::MtpHead>) {
    let target =
        std::sync::Arc::new(specdec_gguf::GgufFile::from_bytes(tiny_gemma3(seed, &|_, _| {}), "tiny").unwrap());
    let opts = crate::LoadOptions { threads: 1, force_f32: false };
    let l = crate::load_file(target.clone(), &opts, &|_, _| {}).unwrap();
    let vocab: Vec<u32> = (0..l.model.vocab_size() as u32).collect();
    let head = specdec_gguf::GgufFile::from_bytes(random_head(&target, vocab, head_seed).unwrap(), "head").unwrap();
    let head = crate::models::head::load_head(target, &head, l.pool.clone(), false).unwrap();
    (l, head)
}
