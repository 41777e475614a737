//! Tokenizers built from GGUF metadata.
//!
//! - `llama` (SentencePiece-style, as Gemma 3 uses): score-ordered bigram
//!   merging over UTF-8 characters, `<0xXX>` byte fallback;
//! - special-token partitioning before either model runs (control tokens only
//!   when `parse_special`, user-defined tokens always), as llama.cpp does;
//! - streaming detokenization that never emits half a UTF-8 character.

mod bpe;
mod spm;
mod stream;

use std::collections::HashMap;

use specdec_gguf::{Array, Gguf, Value};

pub use bpe::pre_for_pattern;
pub use stream::StreamDecoder;

pub type TokenId = u32;

/// Token kinds of `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_i32(v: i32) -> Option<TokenKind> {
        Some(match v {
            1 => TokenKind::Normal,
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata {key}: {problem}")]
    Metadata { key: String, problem: String },
    #[error("tokenizer model {0:?} is not supported (supported: llama, gpt2)")]
    UnsupportedModel(String),
}

fn meta_err(key: &str, problem: impl Into<String>) -> TokenizerError {
    TokenizerError::Metadata { key: key.to_string(), problem: problem.into() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// SentencePiece-style (`llama`).
    Spm,
    /// Byte-level BPE (`gpt2`).
    Bpe,
}

pub struct Tokenizer {
    pub model: Model,
    bpe: Option<bpe::Bpe>,
    tokens: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<TokenKind>,
    to_id: HashMap<String, TokenId>,
    /// Control / user-defined / unknown tokens, longest text first.
    specials: Vec<TokenId>,
    byte_tokens: [Option<TokenId>; 256],
    pub bos: Option<TokenId>,
    pub eos: Option<TokenId>,
    pub unk: Option<TokenId>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// Tokens that end generation (EOS plus, e.g., Gemma's `<end_of_turn>`).
    pub eog: Vec<TokenId>,
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = match g.get("tokenizer.ggml.model").and_then(Value::as_str) {
            Some("llama") => Model::Spm,
            Some("gpt2") => Model::Bpe,
            Some(other) => return Err(TokenizerError::UnsupportedModel(other.to_string())),
            None => return Err(meta_err("tokenizer.ggml.model", "missing")),
        };
        let tokens = match g.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(Array::String(v)) if !v.is_empty() => v.clone(),
            Some(a) => {
                return Err(meta_err(
                    "tokenizer.ggml.tokens",
                    format!("expected a non-empty string array, found {} x {}", a.len(), a.type_name()),
                ))
            }
            None => return Err(meta_err("tokenizer.ggml.tokens", "missing")),
        };
        let n = tokens.len();
        if n > u32::MAX as usize / 2 {
            return Err(meta_err("tokenizer.ggml.tokens", format!("{n} tokens")));
        }
        let scores = match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
            Some(Array::F32(v)) if v.len() == n => v.clone(),
            Some(a) => {
                return Err(meta_err(
                    "tokenizer.ggml.scores",
                    format!("expected {n} x f32, found {} x {}", a.len(), a.type_name()),
                ))
            }
            None => vec![0.0; n],
        };
        let kinds = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(Array::I32(v)) if v.len() == n => v
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    TokenKind::from_i32(t)
                        .ok_or_else(|| meta_err("tokenizer.ggml.token_type", format!("token {i} has type {t}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(a) => {
                return Err(meta_err(
                    "tokenizer.ggml.token_type",
                    format!("expected {n} x i32, found {} x {}", a.len(), a.type_name()),
                ))
            }
            None => vec![TokenKind::Normal; n],
        };
        let mut to_id = HashMap::with_capacity(n);
        let mut byte_tokens = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            // Later duplicates win, as in llama.cpp.
            to_id.insert(t.clone(), i as TokenId);
            if kinds[i] == TokenKind::Byte {
                let b = parse_byte_token(t).ok_or_else(|| {
                    meta_err("tokenizer.ggml.tokens", format!("byte token {i} has text {t:?}, expected <0xHH>"))
                })?;
                byte_tokens[b as usize] = Some(i as TokenId);
            }
        }
        let id = |key: &str| -> Result<Option<TokenId>, TokenizerError> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(x) if x >= 0 && (x as usize) < n => Ok(Some(x as TokenId)),
                    // llama.cpp writes -1 for "none".
                    Some(-1) => Ok(None),
                    _ => Err(meta_err(key, format!("{v:?} is not a token id below {n}"))),
                },
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        id("tokenizer.ggml.padding_token_id")?;
        id("tokenizer.ggml.eot_token_id")?;
        let flag = |key: &str, default: bool| g.get(key).and_then(Value::as_bool).unwrap_or(default);
        let spm = model == Model::Spm;
        let add_bos = flag("tokenizer.ggml.add_bos_token", spm);
        let add_eos = flag("tokenizer.ggml.add_eos_token", false);
        let add_space_prefix = flag("tokenizer.ggml.add_space_prefix", spm);
        let bpe = if spm {
            None
        } else {
            let merges = match g.get("tokenizer.ggml.merges").and_then(Value::as_array) {
                Some(Array::String(v)) => v.clone(),
                Some(a) => {
                    return Err(meta_err("tokenizer.ggml.merges", format!("expected strings, found {}", a.type_name())))
                }
                None => return Err(meta_err("tokenizer.ggml.merges", "missing (required by gpt2 tokenizers)")),
            };
            let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
            Some(bpe::Bpe::new(&merges, pre)?)
        };
        if add_bos && bos.is_none() {
            return Err(meta_err("tokenizer.ggml.bos_token_id", "add_bos_token is set but there is no BOS token"));
        }
        let mut specials: Vec<TokenId> = (0..n as TokenId)
            .filter(|&i| {
                matches!(kinds[i as usize], TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown)
                    && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()).then(a.cmp(&b)));
        let mut eog: Vec<TokenId> = eos.into_iter().collect();
        for name in ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>"] {
            if let Some(&t) = to_id.get(name) {
                if !eog.contains(&t) {
                    eog.push(t);
                }
            }
        }
        if let Some(t) = id("tokenizer.ggml.eot_token_id")? {
            if !eog.contains(&t) {
                eog.push(t);
            }
        }
        Ok(Tokenizer {
            model,
            bpe,
            tokens,
            scores,
            kinds,
            to_id,
            specials,
            byte_tokens,
            bos,
            eos,
            unk,
            add_bos,
            add_eos,
            add_space_prefix,
            eog,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    pub fn token_text(&self, id: TokenId) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
    pub fn token_kind(&self, id: TokenId) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }
    pub fn is_eog(&self, id: TokenId) -> bool {
        self.eog.contains(&id)
    }

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the metadata says;
    /// `parse_special` turns control-token text into control tokens.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<TokenId> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Token(t) => {
                    out.push(t);
                    prev_special = true;
                }
                Fragment::Text(s) if self.bpe.is_some() => {
                    self.bpe.as_ref().expect("checked").tokenize(s, &self.to_id, &mut out);
                    prev_special = false;
                }
                Fragment::Text(s) => {
                    let mut t = String::with_capacity(s.len() + 3);
                    if self.add_space_prefix && prev_special {
                        t.push(' ');
                    }
                    t.push_str(s);
                    let escaped = t.replace(' ', "\u{2581}");
                    spm::tokenize(self, &escaped, &mut out);
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Splits text at special tokens: longest token text first, each token
    /// splitting every remaining text fragment at all its occurrences.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        if text.is_empty() {
            return vec![];
        }
        for &id in &self.specials {
            let kind = self.kinds[id as usize];
            if !parse_special && matches!(kind, TokenKind::Control | TokenKind::Unknown) {
                continue;
            }
            let pat = self.tokens[id as usize].as_str();
            if !frags.iter().any(|f| matches!(f, Fragment::Text(s) if s.contains(pat))) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(mut s) => {
                        while let Some(p) = s.find(pat) {
                            if p > 0 {
                                next.push(Fragment::Text(&s[..p]));
                            }
                            next.push(Fragment::Token(id));
                            s = &s[p + pat.len()..];
                        }
                        if !s.is_empty() {
                            next.push(Fragment::Text(s));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes a token stands for. Control tokens are empty unless `special`.
    pub fn token_bytes(&self, id: TokenId, special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.kinds[id as usize] {
            TokenKind::Normal => match &self.bpe {
                Some(b) => b.decode_text(text),
                None => text.replace('\u{2581}', " ").into_bytes(),
            },
            TokenKind::UserDefined => match &self.bpe {
                Some(_) => text.as_bytes().to_vec(),
                None => text.replace('\u{2581}', " ").into_bytes(),
            },
            TokenKind::Byte => parse_byte_token(text).map(|b| vec![b]).unwrap_or_default(),
            TokenKind::Unknown => "\u{2585}".as_bytes().to_vec(),
            TokenKind::Control | TokenKind::Unused => {
                if special {
                    text.as_bytes().to_vec()
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Decodes a whole sequence (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[TokenId], special: bool) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&t| self.token_bytes(t, special)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

enum Fragment<'a> {
    Text(&'a str),
    Token(TokenId),
}

/// Strict `<0xHH>` grammar: exactly two hex digits.
fn parse_byte_token(t: &str) -> Option<u8> {
    let b = t.as_bytes();
    if b.len() == 6 && &b[..3] == b"<0x" && b[5] == b'>' && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit() {
        u8::from_str_radix(&t[3..5], 16).ok()
    } else {
        None
    }
}
