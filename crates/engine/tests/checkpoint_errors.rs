//! Malformed Hugging Face checkpoints (reliability plan, safetensors and
//! sharded-index cases): every one is a typed error naming the file, never a
//! panic, and nothing outside the directory is read.

use std::path::{Path, PathBuf};

use specdec_engine::{load, EngineError, LoadOptions};

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(arch).join("hf")
}

/// A scratch copy of a fixture checkpoint.
fn copy(arch: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-ckpt-{}-{arch}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture(arch)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    let r = std::panic::catch_unwind(|| load(dir, &LoadOptions { threads: 1, force_f32: false }, &|_, _| {}));
    let _ = std::fs::remove_dir_all(dir);
    match r {
        Ok(Ok(_)) => panic!("{} loaded, expected an error", dir.display()),
        Ok(Err(e)) => {
            assert!(matches!(
                e,
                EngineError::Checkpoint { .. }
                    | EngineError::UnsupportedArch(_)
                    | EngineError::MissingTensor(_)
                    | EngineError::TensorShape { .. }
                    | EngineError::Gguf(_)
            ));
            e.to_string()
        }
        Err(_) => panic!("{} panicked", dir.display()),
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn index(dir: &Path) -> PathBuf {
    dir.join("model.safetensors.index.json")
}

#[test]
fn sharded_index_cases() {
    // ST-INDEX-PATH-TRAVERSAL: relative and absolute.
    for (tag, bad) in [("dotdot", "../model-00001-of-00011.safetensors"), ("abs", "/etc/passwd")] {
        let d = copy("llama", tag);
        edit_json(&index(&d), |v| v["weight_map"]["model.norm.weight"] = bad.into());
        let e = load_err(&d);
        assert!(e.contains("plain file name"), "{e}");
    }
    // ST-INDEX-MISSING-IN-SHARD: the index points at a shard without the tensor.
    let d = copy("llama", "missing");
    edit_json(&index(&d), |v| v["weight_map"]["model.norm.weight"] = "model-00002-of-00011.safetensors".into());
    let e = load_err(&d);
    assert!(e.contains("does not hold"), "{e}");
    // ST-INDEX-DUP-ACROSS-SHARDS: a tensor present in two shards.
    let d = copy("llama", "dup");
    let a = std::fs::read(d.join("model-00002-of-00011.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&a).unwrap();
    let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    let extra = names[0].clone();
    let view = st.tensor(&extra).unwrap();
    let bytes = safetensors::serialize([(extra.as_str(), view.clone()), ("model.norm.weight", view)], None).unwrap();
    std::fs::write(d.join("model-00003-of-00011.safetensors"), bytes).unwrap();
    edit_json(&index(&d), |v| {
        v["weight_map"]["model.norm.weight"] = "model-00003-of-00011.safetensors".into();
    });
    let e = load_err(&d);
    assert!(e.contains("appears twice") || e.contains("does not hold"), "{e}");
    // A shard the index names but that does not exist.
    let d = copy("llama", "gone");
    std::fs::remove_file(d.join("model-00004-of-00011.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model-00004-of-00011.safetensors"), "{e}");
}

#[test]
fn broken_safetensors_files() {
    let original = std::fs::read(fixture("qwen2").join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("short", original[..5].to_vec()),                        // ST-LEN-LT8
        ("truncated", original[..original.len() - 100].to_vec()), // ST-DATA-SHORT
        ("header-beyond-file", {
            let mut b = original.clone();
            b[..8].copy_from_slice(&(original.len() as u64).to_le_bytes());
            b
        }),
        ("huge-header", {
            let mut b = original.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("not-json", {
            let mut b = original.clone();
            b[8] = b'#';
            b
        }),
        ("non-utf8", {
            let mut b = original.clone();
            b[9] = 0xFF;
            b
        }),
    ];
    // ST-DTYPE: a dtype the engine does not take (I32), well-formed otherwise.
    let header = std::str::from_utf8(&original[8..8 + n]).unwrap().replacen("\"F32\"", "\"I32\"", 1);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&original[8 + n..]);
    cases.push(("dtype", b));
    for (tag, bytes) in cases {
        let d = copy("qwen2", tag);
        std::fs::write(d.join("model.safetensors"), bytes).unwrap();
        let e = load_err(&d);
        assert!(e.contains("model.safetensors"), "{tag}: {e}");
    }
}

#[test]
fn wrong_shapes_and_missing_tensors_are_named() {
    // A q_proj with too few rows: the model's shape check names it.
    let d = copy("qwen2", "shape");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut keep: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
    let q = "model.layers.1.self_attn.q_proj.weight";
    let small: Vec<u8>;
    {
        let v = st.tensor(q).unwrap();
        let shape = v.shape().to_vec();
        small = v.data()[..v.data().len() / 2].to_vec();
        for (name, view) in st.tensors() {
            if name != q {
                keep.push((name, view));
            }
        }
        keep.push((
            q.to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![shape[0] / 2, shape[1]], &small)
                .unwrap(),
        ));
        let out = safetensors::serialize(keep.iter().map(|(n, v)| (n.as_str(), v.clone())), None).unwrap();
        std::fs::write(d.join("model.safetensors"), out).unwrap();
    }
    let e = load_err(&d);
    assert!(e.contains("blk.1.attn_q.weight"), "{e}");

    // A tensor left out: named as missing.
    let d = copy("qwen2", "missing");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let out = safetensors::serialize(
        st.tensors().into_iter().filter(|(n, _)| n != "model.layers.2.mlp.up_proj.weight"),
        None,
    )
    .unwrap();
    std::fs::write(d.join("model.safetensors"), out).unwrap();
    let e = load_err(&d);
    assert!(e.contains("blk.2.ffn_up.weight"), "{e}");
}

#[test]
fn bad_config_and_tokenizer_files() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, &str, Edit, &str)> = vec![
        ("arch", "config.json", Box::new(|v| v["model_type"] = "mamba".into()), "mamba"),
        ("hidden", "config.json", Box::new(|v| v["hidden_size"] = serde_json::Value::Null), "hidden_size"),
        ("heads", "config.json", Box::new(|v| v["num_attention_heads"] = (-3).into()), "num_attention_heads"),
        ("rope", "config.json", Box::new(|v| v["rope_parameters"]["rope_type"] = "dynamic".into()), "dynamic"),
        ("vocab-small", "config.json", Box::new(|v| v["vocab_size"] = 100.into()), "outside"),
        (
            "pre",
            "tokenizer.json",
            Box::new(|v| v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+".into()),
            "regex",
        ),
        ("tok-model", "tokenizer.json", Box::new(|v| v["model"]["type"] = "Unigram".into()), "Unigram"),
    ];
    for (tag, file, f, want) in cases {
        let d = copy("qwen2", tag);
        edit_json(&d.join(file), f);
        let e = load_err(&d);
        assert!(e.contains(want), "{tag}: {e}");
    }
    let d = copy("qwen2", "garbage");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert!(load_err(&d).contains("invalid JSON"));
    let d = copy("qwen2", "no-tokenizer");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    assert!(load_err(&d).contains("tokenizer.json"));
}

/// Draft/target pairs in the R1 family: R1-Distill-Qwen-1.5B drafts for the
/// 7B/14B/32B, whose vocabularies are 128 padding tokens longer; a pair whose
/// special tokens were renamed is refused with the token named.
#[test]
fn family_vocabularies_pair_up_within_128_tokens() {
    use specdec_engine::spec::model_drafter::check_vocab_compat;
    use specdec_gguf::{Array, GgufWriter, Value};
    use specdec_tokenizer::Tokenizer;
    let path = fixture("qwen2").parent().unwrap().join("model.gguf");
    let bytes = std::fs::read(path).unwrap();
    let base = specdec_gguf::parse(&bytes).unwrap();
    let Some(Value::Array(Array::String(tokens))) = base.get("tokenizer.ggml.tokens") else { panic!("tokens") };
    let with_tokens = |edit: &dyn Fn(&mut Vec<String>)| -> Tokenizer {
        let mut t = tokens.clone();
        edit(&mut t);
        let mut w = GgufWriter::new();
        for (k, v) in &base.metadata {
            let v = match (k.as_str(), v) {
                ("tokenizer.ggml.tokens", _) => Value::Array(Array::String(t.clone())),
                ("tokenizer.ggml.token_type", Value::Array(Array::I32(ty))) => {
                    let mut ty = ty.clone();
                    ty.resize(t.len(), 5); // unused (padding)
                    Value::Array(Array::I32(ty))
                }
                _ => v.clone(),
            };
            w.kv(k, v);
        }
        Tokenizer::from_gguf(&specdec_gguf::parse(&w.to_bytes()).unwrap()).unwrap()
    };
    let n = tokens.len();
    let pad = |extra: usize| move |t: &mut Vec<String>| t.extend((0..extra).map(|i| format!("[PAD{}]", n + i)));
    let small = with_tokens(&pad(0));
    let big = with_tokens(&pad(128));
    assert!(check_vocab_compat(&big, &small).is_ok(), "128 padding tokens apart must pair up");
    let e = check_vocab_compat(&with_tokens(&pad(129)), &small).unwrap_err();
    assert!(e.contains("more than 128"), "{e}");
    let renamed = with_tokens(&|t: &mut Vec<String>| {
        let i = t.iter().position(|s| s == "<|im_end|>").unwrap();
        t[i] = "<|end|>".into();
    });
    let e = check_vocab_compat(&renamed, &small).unwrap_err();
    assert!(e.contains("<|end|>") && e.contains("<|im_end|>"), "{e}");
}
