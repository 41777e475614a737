//! The engine: models (one file per architecture), the KV cache, sampling and
//! the plain generation loop.
//!
//! Data flow: GGUF file -> `weights` (semantic checks, packing) -> a `Model`
//! whose `forward` runs tokens at the cache's next positions and returns
//! logits for the rows asked for -> `sampler` -> tokens.

pub mod fixtures;
pub mod generate;
pub mod hf;
pub mod kv;
pub mod models;
pub mod profile;
pub mod rng;
pub mod sampler;
pub mod spec;
pub mod synthetic;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use specdec_gguf::{GgufError, GgufFile};
use specdec_kernels::Pool;
use specdec_tokenizer::{Tokenizer, TokenizerError};

pub use kv::KvCache;

/// File name of the default model (Gemma 3 270M Q4_K_M).
pub const DEFAULT_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// Where `scripts/fetch-model.sh` puts the default model:
/// `$SPECDEC_HOME/models/` (default `~/.cache/specdec/models/`).
pub fn default_model_path() -> std::path::PathBuf {
    std::env::var_os("SPECDEC_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/specdec")
        })
        .join("models")
        .join(DEFAULT_MODEL_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("model metadata {key}: {problem}")]
    Metadata { key: String, problem: String },
    #[error("architecture {0:?} is not supported (supported: gemma3, llama, qwen2, deepseek2)")]
    UnsupportedArch(String),
    #[error("required tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {found:?}, expected {want:?}")]
    TensorShape { name: String, want: Vec<u64>, found: Vec<u64> },
    #[error("tensor {0:?}: {1}")]
    Tensor(String, String),
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("{0}")]
    Unsupported(String),
    #[error("checkpoint {file}: {problem}")]
    Checkpoint { file: String, problem: String },
    #[error("context full: {need} positions needed, the cache holds {capacity}")]
    ContextFull { need: usize, capacity: usize },
}

/// Which rows of a forward pass need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last row (prefill, plain decoding).
    Last,
    /// Every row (verification needs them all).
    All,
    /// No row: the pass only fills the cache (a prompt chunk that is not the
    /// last, an MTP head catching up on verified positions).
    None,
}

/// A pass's rows as the sampler or verifier reads them: logits (`n_vocab`
/// per row) or, where the argmax is all that is read
/// (`SamplingParams::argmax_suffices`), only that.
#[derive(Clone, Copy, Debug)]
pub enum Scores<'a> {
    Logits(&'a [f32]),
    Argmax(&'a [u32]),
}

/// The owned form of `Scores`: what a pass returned.
#[derive(Clone, Debug)]
pub enum PassScores {
    Logits(Vec<f32>),
    Argmax(Vec<u32>),
}

impl PassScores {
    pub fn scores(&self) -> Scores<'_> {
        match self {
            PassScores::Logits(l) => Scores::Logits(l),
            PassScores::Argmax(ids) => Scores::Argmax(ids),
        }
    }
}

/// Each `n`-wide row's argmax (`ops::argmax`'s rules): the trait defaults of
/// the `_argmax` passes, for models without a fused output layer.
fn row_argmaxes(logits: &[f32], n: usize) -> Vec<u32> {
    logits.chunks_exact(n).map(|r| specdec_kernels::ops::argmax(r) as u32).collect()
}

/// A causal language model.
pub trait Model: Send + Sync {
    fn vocab_size(&self) -> usize;
    /// The longest context the model supports.
    fn max_context(&self) -> usize;
    fn new_cache(&self, capacity: usize) -> KvCache;
    /// Runs `tokens` at positions `cache.len()..` and appends them to the cache.
    /// Returns logits, `vocab_size` per requested row.
    fn forward(&self, cache: &mut KvCache, tokens: &[u32], rows: LogitRows) -> Result<Vec<f32>, EngineError>;
    /// As `forward`, but only each requested row's argmax (the greedy token,
    /// `sampler::argmax`'s rules): all that greedy decoding and greedy
    /// verification without penalties read. A model may find it without
    /// writing the logits out (`Gemma3`: 1 MB per row of a verify pass).
    fn forward_argmax(&self, cache: &mut KvCache, tokens: &[u32], rows: LogitRows) -> Result<Vec<u32>, EngineError> {
        let mut items = [BatchItem { cache, tokens, rows }];
        Ok(self.forward_batch_argmax(&mut items)?.pop().unwrap_or_default())
    }
    /// Several sequences (each with its own cache) in one pass, so weights are
    /// read once for all of them. Each sequence's logits equal what `forward`
    /// gives it alone, bit for bit (rows never mix). On error no cache changes.
    fn forward_batch(&self, items: &mut [BatchItem]) -> Result<Vec<Vec<f32>>, EngineError> {
        for it in items.iter() {
            check_item(self, it)?;
        }
        items.iter_mut().map(|it| self.forward(it.cache, it.tokens, it.rows)).collect()
    }
    /// As `forward`, also returning the post-final-norm hidden state of every
    /// row (`n_embd` floats each): what an MTP drafter builds on, handed over
    /// from the verify pass rather than recomputed.
    fn forward_hidden(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>), EngineError> {
        let _ = (cache, tokens, rows);
        Err(EngineError::Unsupported(format!("{} does not expose hidden states", self.describe())))
    }
    /// `forward_hidden` with `forward_argmax`'s output in place of the logits
    /// (greedy verification for an MTP drafter).
    fn forward_hidden_argmax(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        rows: LogitRows,
    ) -> Result<(Vec<u32>, Vec<f32>), EngineError> {
        let n = self.vocab_size();
        let (logits, hidden) = self.forward_hidden(cache, tokens, rows)?;
        Ok((row_argmaxes(&logits, n), hidden))
    }
    /// `forward_batch` with `forward_argmax`'s output: each sequence's row
    /// argmaxes (a server batch whose sequences all decode greedily).
    fn forward_batch_argmax(&self, items: &mut [BatchItem]) -> Result<Vec<Vec<u32>>, EngineError> {
        let n = self.vocab_size();
        let logits = self.forward_batch(items)?;
        Ok(logits.iter().map(|l| row_argmaxes(l, n)).collect())
    }
    /// As `forward_batch`, also returning each sequence's post-norm hidden
    /// states (every row, `n_embd` floats each), for MTP drafters in a server.
    #[allow(clippy::type_complexity)]
    fn forward_batch_hidden(&self, items: &mut [BatchItem]) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), EngineError> {
        for it in items.iter() {
            check_item(self, it)?;
        }
        let mut logits = Vec::with_capacity(items.len());
        let mut hidden = Vec::with_capacity(items.len());
        for it in items.iter_mut() {
            let (l, h) = self.forward_hidden(it.cache, it.tokens, it.rows)?;
            logits.push(l);
            hidden.push(h);
        }
        Ok((logits, hidden))
    }
    /// `forward_batch_hidden` with `forward_argmax`'s output in place of the
    /// logits (a server batch with MTP drafters whose sequences all decode
    /// greedily).
    #[allow(clippy::type_complexity)]
    fn forward_batch_hidden_argmax(
        &self,
        items: &mut [BatchItem],
    ) -> Result<(Vec<Vec<u32>>, Vec<Vec<f32>>), EngineError> {
        let n = self.vocab_size();
        let (logits, hidden) = self.forward_batch_hidden(items)?;
        Ok((logits.iter().map(|l| row_argmaxes(l, n)).collect(), hidden))
    }
    /// Weight bytes one decode step reads, as stored in the file.
    fn weight_bytes_per_token(&self) -> usize;
    /// Weight bytes one decode step reads in the packed layout.
    fn packed_bytes_per_token(&self) -> usize;
    fn describe(&self) -> String;
}

/// One sequence of a batched pass.
pub struct BatchItem<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub rows: LogitRows,
}

/// The checks `forward` makes before touching the cache.
pub fn check_item<M: Model + ?Sized>(model: &M, it: &BatchItem) -> Result<(), EngineError> {
    let need = it.cache.len() + it.tokens.len();
    if need > it.cache.capacity {
        return Err(EngineError::ContextFull { need, capacity: it.cache.capacity });
    }
    if let Some(&t) = it.tokens.iter().find(|&&t| t as usize >= model.vocab_size()) {
        return Err(EngineError::TokenOutOfRange { id: t, vocab: model.vocab_size() });
    }
    Ok(())
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub file: Arc<GgufFile>,
    pub tokenizer: Tokenizer,
    pub model: Box<dyn Model>,
    /// The model's worker threads (a drafter built from the same file, such
    /// as the MTP module, shares them).
    pub pool: Arc<Pool>,
    /// Whether weights were loaded as exact f32.
    pub force_f32: bool,
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Dequantize every weight to f32 (slow; exact float reference path).
    pub force_f32: bool,
}

/// Loads a GGUF file, or a Hugging Face checkpoint directory (converted in
/// memory, see `hf`).
pub fn load(path: &Path, opts: &LoadOptions, progress: &dyn Fn(usize, usize)) -> Result<Loaded, EngineError> {
    let file = Arc::new(if path.is_dir() { hf::load_dir(path)? } else { GgufFile::open(path)? });
    load_file(file, opts, progress)
}

/// Builds the model and tokenizer of an opened (or in-memory) GGUF file.
pub fn load_file(
    file: Arc<GgufFile>,
    opts: &LoadOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<Loaded, EngineError> {
    if file.header.get("general.architecture").and_then(specdec_gguf::Value::as_str) == Some(models::head::HEAD_ARCH) {
        return Err(EngineError::Unsupported(
            "this file is a specdec MTP head, not a model: use it with --drafter mtp:PATH".into(),
        ));
    }
    let tokenizer = Tokenizer::from_gguf(&file.header)?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        opts.threads
    };
    let pool = Arc::new(Pool::new(threads));
    let model: Box<dyn Model> = models::load(file.clone(), pool.clone(), opts.force_f32, progress)?;
    if model.vocab_size() < tokenizer.vocab_size() {
        return Err(EngineError::Metadata {
            key: "tokenizer.ggml.tokens".into(),
            problem: format!("{} tokens but the output layer has {} rows", tokenizer.vocab_size(), model.vocab_size()),
        });
    }
    Ok(Loaded { file, tokenizer, model, pool, force_f32: opts.force_f32 })
}
