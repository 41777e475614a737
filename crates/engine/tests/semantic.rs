//! Semantic checks of model metadata (the SEM-* cases of the reliability
//! plan): a clear, typed error naming the key or tensor, never a panic.

mod common;

use common::{load_bytes, tiny_gemma3};
use specdec_gguf::{Array, Value};

fn set(kv: &mut Vec<(String, Value)>, key: &str, v: Option<Value>) {
    kv.retain(|(k, _)| k != key);
    if let Some(v) = v {
        kv.push((key.to_string(), v));
    }
}

fn expect(case: &str, bytes: Vec<u8>, needles: &[&str]) {
    let r = std::panic::catch_unwind(|| load_bytes(&bytes)).unwrap_or_else(|_| panic!("{case}: panicked"));
    let msg = match r {
        Ok(_) => panic!("{case}: loaded but should fail"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "{case}: {msg:?} lacks {n:?}");
    }
}

#[test]
fn tiny_model_loads() {
    let l = load_bytes(&tiny_gemma3(1, &|_, _| {})).unwrap();
    assert_eq!(l.model.vocab_size(), 300);
    let abc = 261 + 256 - 256 + 6; // "abc" follows the 256 byte tokens and 5 specials
    assert_eq!(l.tokenizer.token_text(abc), Some("abc"));
    assert_eq!(l.tokenizer.encode("abc", true, false), vec![2, abc]);
    // "l" is not in the vocabulary: byte fallback.
    assert_eq!(l.tokenizer.encode("l", false, false), vec![5 + b'l' as u32]);
}

#[test]
fn semantic_cases() {
    let kv_case = |key: &'static str, v: Option<Value>| tiny_gemma3(1, &move |kv, _| set(kv, key, v.clone()));
    expect("SEM-ARCH-MISSING", kv_case("general.architecture", None), &["general.architecture", "missing"]);
    expect(
        "SEM-ARCH-UNKNOWN",
        kv_case("general.architecture", Some(Value::String("nope".into()))),
        &["\"nope\"", "not supported"],
    );
    expect("SEM-BLOCKCOUNT-0", kv_case("gemma3.block_count", Some(Value::U32(0))), &["gemma3.block_count", "U32(0)"]);
    expect("SEM-BLOCKCOUNT-HUGE", kv_case("gemma3.block_count", Some(Value::U32(1 << 30))), &["gemma3.block_count"]);
    expect(
        "SEM-HEADS-0",
        kv_case("gemma3.attention.head_count", Some(Value::U32(0))),
        &["gemma3.attention.head_count"],
    );
    expect(
        "SEM-KVHEADS-NOT-DIV",
        kv_case("gemma3.attention.head_count_kv", Some(Value::U32(3))),
        &["head_count_kv", "3"],
    );
    expect("SEM-CTX-0", kv_case("gemma3.context_length", Some(Value::U32(0))), &["gemma3.context_length"]);
    expect("SEM-CTX-HUGE", kv_case("gemma3.context_length", Some(Value::U64(1 << 40))), &["gemma3.context_length"]);
    expect(
        "SEM-EPS-NAN",
        kv_case("gemma3.attention.layer_norm_rms_epsilon", Some(Value::F32(f32::NAN))),
        &["layer_norm_rms_epsilon"],
    );
    expect(
        "SEM-TENSOR-MISSING",
        tiny_gemma3(1, &|_, t| t.retain(|x| x.0 != "blk.1.ffn_up.weight")),
        &["blk.1.ffn_up.weight", "missing"],
    );
    expect(
        "SEM-TENSOR-WRONG-SHAPE",
        tiny_gemma3(1, &|_, t| {
            for x in t.iter_mut() {
                if x.0 == "blk.0.attn_norm.weight" {
                    x.1 = vec![32];
                    x.3.truncate(32 * 4);
                }
            }
        }),
        &["blk.0.attn_norm.weight", "[32]", "[64]"],
    );
    expect(
        "SEM-VOCAB-LEN-MISMATCH",
        kv_case("tokenizer.ggml.scores", Some(Value::Array(Array::F32(vec![0.0; 299])))),
        &["tokenizer.ggml.scores", "299"],
    );
    expect(
        "SEM-VOCAB-ARRAY-WRONG-ELEM-TYPE",
        kv_case("tokenizer.ggml.token_type", Some(Value::Array(Array::U8(vec![1; 300])))),
        &["tokenizer.ggml.token_type", "u8"],
    );
    expect(
        "SEM-SPECIAL-ID-OOV",
        kv_case("tokenizer.ggml.bos_token_id", Some(Value::U32(300))),
        &["bos_token_id", "300"],
    );
    expect(
        "SEM-SPECIAL-ID-OOV (implicit: BOS needed but absent)",
        kv_case("tokenizer.ggml.bos_token_id", None),
        &["bos_token_id"],
    );
    for bad in ["<0x-1>", "<0xZZ>", "<0x1>"] {
        expect(
            &format!("SEM-BYTE-TOKEN-BAD-HEX {bad}"),
            tiny_gemma3(1, &move |kv, _| {
                for (k, v) in kv.iter_mut() {
                    if k == "tokenizer.ggml.tokens" {
                        if let Value::Array(Array::String(s)) = v {
                            s[5] = bad.to_string();
                        }
                    }
                }
            }),
            &["byte token 5", bad],
        );
    }
    expect(
        "unsupported tokenizer model",
        kv_case("tokenizer.ggml.model", Some(Value::String("rwkv".into()))),
        &["\"rwkv\""],
    );
}
