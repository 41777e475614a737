//! Byte-level BPE (GGUF `tokenizer.ggml.model = "gpt2"`), as the Qwen2 and
//! Llama 3 families (and so the DeepSeek-R1 distills) use.
//!
//! Text is split into words by the pre-tokenizer regex named by
//! `tokenizer.ggml.pre`, each word's UTF-8 bytes are mapped to printable
//! characters (GPT-2's byte-to-unicode table), and adjacent symbols are merged
//! lowest-rank first using `tokenizer.ggml.merges`.

use std::collections::HashMap;

use crate::{meta_err, TokenId, TokenizerError};

/// GPT-2's reversible byte <-> printable-character table.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("valid")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid")
        };
    }
    table
}

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` name of a pre-tokenizer regex found in a
/// `tokenizer.json` (as llama.cpp's converter names them), if we know it.
pub fn pre_for_pattern(pattern: &str) -> Option<&'static str> {
    match pattern {
        LLAMA3 => Some("llama-bpe"),
        QWEN2 => Some("qwen2"),
        GPT2 => Some("gpt2"),
        _ => None,
    }
}

/// Pre-tokenizer patterns by `tokenizer.ggml.pre`.
pub(crate) fn pre_pattern(pre: &str) -> &'static str {
    match pre {
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" | "dbrx" => LLAMA3,
        "qwen2" | "deepseek-r1-qwen" | "qwen35" => QWEN2,
        _ => GPT2,
    }
}

pub(crate) struct Bpe {
    ranks: HashMap<(String, String), u32>,
    split: fancy_regex::Regex,
    bytes: [char; 256],
    rev: HashMap<char, u8>,
}

impl Bpe {
    pub(crate) fn new(merges: &[String], pre: &str) -> Result<Bpe, TokenizerError> {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| meta_err("tokenizer.ggml.merges", format!("merge {i} ({m:?}) is not two symbols")))?;
            ranks.entry((a.to_string(), b.to_string())).or_insert(i as u32);
        }
        let split = fancy_regex::Regex::new(pre_pattern(pre))
            .map_err(|e| meta_err("tokenizer.ggml.pre", format!("pattern for {pre:?}: {e}")))?;
        let bytes = byte_to_char();
        let rev = bytes.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        Ok(Bpe { ranks, split, bytes, rev })
    }

    /// Tokenizes one raw-text fragment.
    pub(crate) fn tokenize(&self, text: &str, to_id: &HashMap<String, TokenId>, out: &mut Vec<TokenId>) {
        let mut words = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            match self.split.find_from_pos(text, pos) {
                Ok(Some(m)) if m.end() > pos => {
                    if m.start() > pos {
                        words.push(&text[pos..m.start()]);
                    }
                    words.push(m.as_str());
                    pos = m.end();
                }
                // No further match (or a backtracking limit): the rest is one word.
                _ => {
                    words.push(&text[pos..]);
                    break;
                }
            }
        }
        for w in words {
            self.word(w, to_id, out);
        }
    }

    fn word(&self, w: &str, to_id: &HashMap<String, TokenId>, out: &mut Vec<TokenId>) {
        let mapped: String = w.bytes().map(|b| self.bytes[b as usize]).collect();
        if let Some(&id) = to_id.get(&mapped) {
            out.push(id);
            return;
        }
        let mut syms: Vec<String> = mapped.chars().map(|c| c.to_string()).collect();
        loop {
            let best = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, p)| self.ranks.get(&(p[0].clone(), p[1].clone())).map(|&r| (r, i)))
                .min();
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        for s in syms {
            match to_id.get(&s) {
                Some(&id) => out.push(id),
                // A symbol missing from the vocabulary: emit its characters
                // one by one (each byte character is a token in byte-level BPE).
                None => out.extend(s.chars().filter_map(|c| to_id.get(&c.to_string()).copied())),
            }
        }
    }

    /// The bytes a byte-level token text stands for.
    pub(crate) fn decode_text(&self, text: &str) -> Vec<u8> {
        let mut v = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.rev.get(&c) {
                Some(&b) => v.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    v.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        v
    }
}
