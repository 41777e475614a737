//! Tokenizer parity with llama.cpp on the default model
//! (../shared/reference/gemma-3-270m/tokenize-dev.jsonl).

use std::path::PathBuf;

use specdec_gguf::GgufFile;
use specdec_tokenizer::{StreamDecoder, Tokenizer};

fn default_model() -> PathBuf {
    if let Ok(p) = std::env::var("SPECDEC_MODEL") {
        return p.into();
    }
    let home = std::env::var("SPECDEC_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/specdec"));
    let p = home.join("models/gemma-3-270m-q4_k_m.gguf");
    assert!(p.exists(), "default model missing at {}: run scripts/fetch-model.sh", p.display());
    p
}

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

#[test]
fn matches_llama_cpp_on_every_reference_string() {
    let f = GgufFile::open(default_model()).unwrap();
    let tok = Tokenizer::from_gguf(&f.header).unwrap();
    let text = std::fs::read_to_string(shared().join("reference/gemma-3-270m/tokenize-dev.jsonl")).unwrap();
    let mut n = 0;
    let mut bad = vec![];
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = v["text"].as_str().unwrap();
        let want: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got = tok.encode(s, v["add_bos"].as_bool().unwrap(), v["parse_special"].as_bool().unwrap());
        if got != want {
            bad.push(format!("{s:?}\n  want {want:?}\n  got  {got:?}"));
        }
        // Decoding the ids (without BOS) gives the text back for plain text.
        if !v["parse_special"].as_bool().unwrap() {
            let mut dec = StreamDecoder::new();
            let mut streamed = String::new();
            for &id in &got[1..] {
                streamed.push_str(&dec.push(&tok, id));
            }
            streamed.push_str(&dec.finish());
            assert_eq!(streamed, s, "round trip");
        }
        n += 1;
    }
    assert!(n >= 300, "only {n} reference lines");
    assert!(bad.is_empty(), "{} of {n} differ:\n{}", bad.len(), bad.join("\n"));
}
