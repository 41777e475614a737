//! Byte-level BPE mechanics on a hand-built vocabulary: pre-tokenizer splits,
//! merge order, special tokens, byte round trips.

use specdec_gguf::{parse, Array, GgufWriter, Value};
use specdec_tokenizer::{Model, StreamDecoder, Tokenizer};

/// GPT-2's byte-to-unicode table, written from its definition.
fn byte_char(b: u8) -> char {
    let printable = |x: u32| (0x21..=0x7E).contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
    if printable(b as u32) {
        return char::from_u32(b as u32).unwrap();
    }
    let n = (0..=b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(255 + n).unwrap()
}

fn tokenizer(pre: &str) -> Tokenizer {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let merged = ["he", "ll", "hell", "hello", "\u{120}w", "or", "\u{120}wor", "ld", "\u{120}world", "12", "123", "45"];
    tokens.extend(merged.iter().map(|s| s.to_string()));
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1i32; tokens.len()];
    *types.last_mut().unwrap() = 3;
    let merges: Vec<String> = [
        "h e",
        "l l",
        "he ll",
        "hell o",
        "\u{120} w",
        "o r",
        "\u{120}w or",
        "l d",
        "\u{120}wor ld",
        "1 2",
        "12 3",
        "4 5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eot = tokens.len() as u32 - 1;
    let mut w = GgufWriter::new();
    w.kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::String(pre.into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .kv("tokenizer.ggml.merges", Value::Array(Array::String(merges)))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(eot));
    Tokenizer::from_gguf(&parse(&w.to_bytes()).unwrap()).unwrap()
}

fn texts(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&i| t.token_text(i).unwrap().to_string()).collect()
}

#[test]
fn merges_apply_in_rank_order_within_pretokenized_words() {
    let t = tokenizer("default");
    assert_eq!(t.model, Model::Bpe);
    assert!(!t.add_bos, "gpt2 tokenizers add no BOS unless the metadata says so");
    let ids = t.encode("hello world", true, false);
    assert_eq!(texts(&t, &ids), vec!["hello", "\u{120}world"]);
    // "hellx": merges stop at "hell", then the byte for x.
    assert_eq!(texts(&t, &t.encode("hellx", false, false)), vec!["hell", "x"]);
}

#[test]
fn special_tokens_and_byte_round_trips() {
    let t = tokenizer("default");
    let eot = t.eos.unwrap();
    assert_eq!(*t.encode("hello<|endoftext|>", false, true).last().unwrap(), eot);
    assert!(!t.encode("hello<|endoftext|>", false, false).contains(&eot));
    for s in ["héllo wörld 😀\n\ttabs  and  spaces", "\r\n", "日本語のテキスト", ""] {
        let ids = t.encode(s, false, false);
        assert_eq!(t.decode(&ids, false), s);
        let mut d = StreamDecoder::new();
        let streamed: String = ids.iter().map(|&i| d.push(&t, i)).collect::<String>() + &d.finish();
        assert_eq!(streamed, s);
    }
}

#[test]
fn digit_grouping_follows_the_pre_tokenizer() {
    // Llama 3 groups up to three digits; Qwen 2 splits every digit.
    let l3 = tokenizer("llama-bpe");
    assert_eq!(texts(&l3, &l3.encode("12345", false, false)), vec!["123", "45"]);
    let q2 = tokenizer("qwen2");
    assert_eq!(texts(&q2, &q2.encode("12345", false, false)), vec!["1", "2", "3", "4", "5"]);
}
