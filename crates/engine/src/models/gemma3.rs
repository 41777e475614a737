//! Gemma 3 (GGUF arch `gemma3`).
//!
//! Per layer: x += postnorm(attn(prenorm(x))); x += postnorm(ffn(prenorm(x))).
//! Attention has QK-norm, NEOX rope (base 10k on sliding-window layers, the
//! file's base on global ones), sliding window 512 on 5 of every 6 layers.
//! FFN is GELU(tanh)-gated. The embedding is scaled by sqrt(hidden) and tied to
//! the output layer. GGUF norm weights already include Gemma's `1 +`.

use std::sync::Arc;

use specdec_gguf::GgufFile;
use specdec_kernels::ops::{gelu_mul, rmsnorm, rmsnorm_rows, rope_neox, rope_table, Rope};
use specdec_kernels::{isa, matmul, matmul_gated, ActScratch, Isa, MatmulJob, PackedKind, PackedMatrix, Pool};

use super::common::{
    attention, embed, embedding_table, finish_rows, forward_one, layer_caches, logit_rows, mark_appended, mtp_input,
    output_rows, pick_rows, project_qkv, reserve, split_hidden, store_kv, AttnShape, Head, HeadOut, Rows, ScratchCell,
};

use crate::weights::WeightSource;
use crate::{check_item, BatchItem, EngineError, KvCache, LogitRows, Model};

pub struct Config {
    pub n_embd: usize,
    pub n_layers: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub ctx: usize,
    pub eps: f32,
    pub rope_base_global: f32,
    pub rope_base_local: f32,
    pub window: usize,
    /// Every `swa_period`-th layer (1-based) is global.
    pub swa_period: usize,
    pub attn_scale: f32,
    pub final_softcap: Option<f32>,
}

impl Config {
    /// The hyperparameters of a `gemma3` file and its embedding table.
    pub fn read(w: &WeightSource) -> Result<(Config, specdec_gguf::TensorInfo), EngineError> {
        let n_embd = w.usize("embedding_length", 1..=1 << 16)?;
        let n_layers = w.usize("block_count", 1..=512)?;
        let n_ff = w.usize("feed_forward_length", 1..=1 << 20)?;
        let n_head = w.usize("attention.head_count", 1..=1024)?;
        let n_head_kv = w.usize_or("attention.head_count_kv", 1..=1024, n_head)?;
        if n_head % n_head_kv != 0 {
            return Err(EngineError::Metadata {
                key: "gemma3.attention.head_count_kv".into(),
                problem: format!("{n_head_kv} does not divide head_count {n_head}"),
            });
        }
        let head_dim = w.usize_or("attention.key_length", 1..=4096, n_embd / n_head)?;
        let v_dim = w.usize_or("attention.value_length", 1..=4096, head_dim)?;
        if v_dim != head_dim || head_dim % 2 != 0 {
            return Err(EngineError::Metadata {
                key: "gemma3.attention.value_length".into(),
                problem: format!("key length {head_dim} and value length {v_dim} must be equal and even"),
            });
        }
        let ctx = w.usize("context_length", 1..=1 << 24)?;
        let eps = w.f32_or("attention.layer_norm_rms_epsilon", 1e-6)?;
        let rope_base_global = w.f32_or("rope.freq_base", 1_000_000.0)?;
        let window = w.usize_or("attention.sliding_window", 1..=1 << 24, 512)?;
        let final_softcap = w.f32_or("final_logit_softcapping", 0.0).ok().filter(|&v| v > 0.0);
        let embd = embedding_table(w.file, n_embd)?;
        let n_vocab = embd.dims[1] as usize;
        let cfg = Config {
            n_embd,
            n_layers,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            ctx,
            eps,
            rope_base_global,
            rope_base_local: 10_000.0,
            window,
            swa_period: 6,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            final_softcap,
        };
        Ok((cfg, embd))
    }

    pub fn is_local(&self, layer: usize) -> bool {
        self.swa_period > 0 && !(layer + 1).is_multiple_of(self.swa_period)
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    wq: PackedMatrix,
    wk: PackedMatrix,
    wv: PackedMatrix,
    wo: PackedMatrix,
    post_attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: PackedMatrix,
    up: PackedMatrix,
    down: PackedMatrix,
    post_ffn_norm: Vec<f32>,
}

impl Layer {
    /// The block whose tensors are named `{prefix}attn_q.weight` etc.
    fn load(w: &WeightSource, prefix: &str, c: &Config) -> Result<Layer, EngineError> {
        let (d, hd, ff) = (c.n_embd, c.head_dim, c.n_ff);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);
        let p = |s: &str| format!("{prefix}{s}");
        Ok(Layer {
            attn_norm: w.vector(&p("attn_norm.weight"), d)?,
            q_norm: w.vector(&p("attn_q_norm.weight"), hd)?,
            k_norm: w.vector(&p("attn_k_norm.weight"), hd)?,
            wq: w.matrix(&p("attn_q.weight"), q_dim, d)?,
            wk: w.matrix(&p("attn_k.weight"), kv_dim, d)?,
            wv: w.matrix(&p("attn_v.weight"), kv_dim, d)?,
            wo: w.matrix(&p("attn_output.weight"), d, q_dim)?,
            post_attn_norm: w.vector(&p("post_attention_norm.weight"), d)?,
            ffn_norm: w.vector(&p("ffn_norm.weight"), d)?,
            gate: w.matrix(&p("ffn_gate.weight"), ff, d)?,
            up: w.matrix(&p("ffn_up.weight"), ff, d)?,
            down: w.matrix(&p("ffn_down.weight"), d, ff)?,
            post_ffn_norm: w.vector(&p("post_ffw_norm.weight"), d)?,
        })
    }
}

pub struct Gemma3 {
    pub cfg: Config,
    file: Arc<GgufFile>,
    embd: specdec_gguf::TensorInfo,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: PackedMatrix,
    rope_local: Rope,
    rope_global: Rope,
    pool: Arc<Pool>,
    isa: Isa,
    weight_bytes: usize,
    scratch: ScratchCell,
}

impl Gemma3 {
    pub fn load(
        file: Arc<GgufFile>,
        pool: Arc<Pool>,
        force_f32: bool,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Gemma3, EngineError> {
        let mut w = WeightSource::new(&file)?;
        w.force_f32 = force_f32;
        let (cfg, embd) = Config::read(&w)?;
        let n_layers = cfg.n_layers;
        let n_embd = cfg.n_embd;
        let n_vocab = cfg.n_vocab;
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            progress(i, n_layers + 1);
            layers.push(Layer::load(&w, &format!("blk.{i}."), &cfg)?);
        }
        progress(n_layers, n_layers + 1);
        let out_norm = w.vector("output_norm.weight", n_embd)?;
        let out_name = if w.has("output.weight") { "output.weight" } else { "token_embd.weight" };
        let output = w.matrix(out_name, n_vocab, n_embd)?;
        progress(n_layers + 1, n_layers + 1);
        let mut weight_bytes = file.header.tensor(out_name).map(|t| t.n_bytes as usize).unwrap_or(0);
        weight_bytes += (embd.n_bytes / embd.dims[1]) as usize; // one embedding row
        for t in &file.header.tensors {
            if t.name.starts_with("blk.") {
                weight_bytes += t.n_bytes as usize;
            }
        }
        Ok(Gemma3 {
            rope_local: Rope::new(cfg.head_dim, cfg.rope_base_local),
            rope_global: Rope::new(cfg.head_dim, cfg.rope_base_global),
            cfg,
            file,
            embd,
            layers,
            out_norm,
            output,
            pool,
            isa: isa(),
            weight_bytes,
            scratch: ScratchCell::default(),
        })
    }

    /// The batched pass. `x0` replaces the scaled embedding rows (the MTP
    /// head's combined input); `hidden` receives every row's post-norm hidden
    /// state. Callers check the items first.
    fn run(
        &self,
        items: &mut [BatchItem],
        x0: Option<Vec<f32>>,
        hidden: Option<&mut Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(self.run_to(items, x0, hidden, Head::Logits)?.logits())
    }

    /// The batched pass, ending in `head`'s output per sequence.
    fn run_to(
        &self,
        items: &mut [BatchItem],
        x0: Option<Vec<f32>>,
        hidden: Option<&mut Vec<f32>>,
        head: Head,
    ) -> Result<HeadOut, EngineError> {
        let c = &self.cfg;
        let rows = Rows::of(items);
        let m = rows.len();
        if m == 0 {
            return Ok(head.empty(items.len()));
        }
        let (d, hd) = (c.n_embd, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);

        // x[m x d] = embedding rows * sqrt(d)
        let mut x = match x0 {
            Some(x) => x,
            None => self.embed_rows(&rows.ids)?,
        };
        reserve(items);

        let mut scratch = self.scratch.get();
        let mut h = scratch.take(m * d);
        let mut q = scratch.take(m * q_dim);
        let mut k = scratch.take(m * kv_dim);
        let mut v = scratch.take(m * kv_dim);
        let mut att = scratch.take(m * q_dim);
        let mut o = scratch.take(m * d);
        let mut gate = scratch.take(m * c.n_ff);
        let mut up = scratch.take(m * c.n_ff);
        let qa = &mut scratch.qa;
        // cos/sin of every row's position, for local and global rope bases.
        let (mut cos_l, mut sin_l, mut cos_g, mut sin_g) = (vec![], vec![], vec![], vec![]);
        let (mut tc, mut ts) = (vec![], vec![]);
        for &pos in &rows.pos {
            rope_table(pos, &self.rope_local, &mut tc, &mut ts);
            cos_l.extend_from_slice(&tc);
            sin_l.extend_from_slice(&ts);
            rope_table(pos, &self.rope_global, &mut tc, &mut ts);
            cos_g.extend_from_slice(&tc);
            sin_g.extend_from_slice(&ts);
        }

        // With no hidden states asked for, the last layer's queries,
        // attention and feed-forward run for the logit rows only (a prefill's
        // last row): every other row needs just its keys and values there.
        let keep = if hidden.is_none() { logit_rows(items) } else { None };
        let n_layers = self.layers.len();
        let pool = &*self.pool;
        for (li, l) in self.layers.iter().enumerate() {
            let sub = if li + 1 == n_layers { keep.as_deref() } else { None };
            // attention block
            pool.row_blocks(&mut h, d, &|r0, b| {
                b.copy_from_slice(&x[r0 * d..r0 * d + b.len()]);
                rmsnorm_rows(b, &l.attn_norm, c.eps);
            });
            // mq: the rows that go on past keys and values (x shrinks to them).
            let wqkv = (&l.wq, &l.wk, &l.wv);
            let mq = project_qkv(pool, self.isa, &h, m, qa, wqkv, (&mut q, &mut k, &mut v), sub);
            if let Some(r) = sub {
                x = pick_rows(&x, r, d);
            }
            let (cos, sin) = if c.is_local(li) { (&cos_l, &sin_l) } else { (&cos_g, &sin_g) };
            let half = hd / 2;
            let trig = |i: usize| (&cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half]);
            pool.row_blocks(&mut q[..mq * q_dim], q_dim, &|r0, b| {
                for (i, row) in (r0..).zip(b.chunks_exact_mut(q_dim)) {
                    let (cs, sn) = trig(sub.map_or(i, |r| r[i]));
                    for head in row.chunks_exact_mut(hd) {
                        rmsnorm(head, &l.q_norm, c.eps);
                        rope_neox(head, cs, sn);
                        head.iter_mut().for_each(|v| *v *= c.attn_scale);
                    }
                }
            });
            pool.row_blocks(&mut k, kv_dim, &|r0, b| {
                for (i, row) in (r0..).zip(b.chunks_exact_mut(kv_dim)) {
                    let (cs, sn) = trig(i);
                    for head in row.chunks_exact_mut(hd) {
                        rmsnorm(head, &l.k_norm, c.eps);
                        rope_neox(head, cs, sn);
                    }
                }
            });
            for i in 0..m {
                store_kv(items, &rows, li, i, &k[i * kv_dim..(i + 1) * kv_dim], &v[i * kv_dim..(i + 1) * kv_dim]);
            }
            if mq == 0 {
                continue; // the last layer of a pass with no logit rows
            }
            let shape = AttnShape {
                head_dim: hd,
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                window: c.is_local(li).then_some(c.window),
            };
            let qrows = sub.map(|r| rows.subset(r));
            let (qd, ad) = (&q[..mq * q_dim], &mut att[..mq * q_dim]);
            attention(pool, self.isa, shape, &layer_caches(items, li), qrows.as_ref().unwrap_or(&rows), qd, ad);
            let o = &mut o[..mq * d];
            self.mm(&att[..mq * q_dim], mq, qa, &mut [MatmulJob { w: &l.wo, out: o }]);
            add_normed(pool, &mut x, o, &l.post_attn_norm, c.eps);

            // feed-forward block
            let (h, gate, up) = (&mut h[..mq * d], &mut gate[..mq * c.n_ff], &mut up[..mq * c.n_ff]);
            pool.row_blocks(h, d, &|r0, b| {
                b.copy_from_slice(&x[r0 * d..r0 * d + b.len()]);
                rmsnorm_rows(b, &l.ffn_norm, c.eps);
            });
            matmul_gated(pool, self.isa, h, mq, qa, (&l.gate, &l.up), gate, up, gelu_mul);
            self.mm(gate, mq, qa, &mut [MatmulJob { w: &l.down, out: o }]);
            add_normed(pool, &mut x, o, &l.post_ffn_norm, c.eps);
        }

        if let Some(hs) = hidden {
            hs.clear();
            hs.extend_from_slice(&x);
            rmsnorm_rows(hs, &self.out_norm, c.eps);
        }
        // x holds the logit rows alone when the last layer ran for them alone.
        let (mut xs, per_seq) = match keep {
            None => finish_rows(items, &x, d),
            Some(_) => (x, mark_appended(items)),
        };
        rmsnorm_rows(&mut xs, &self.out_norm, c.eps);
        let out = self.outputs(head, &xs, &per_seq, qa);
        scratch.give([up, gate, o, att, v, k, q, h]);
        self.scratch.put(scratch);
        Ok(out)
    }

    /// One sequence's pass ending in `head`, with every row's post-norm
    /// hidden state.
    fn run_one_hidden(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        rows: LogitRows,
        head: Head,
    ) -> Result<(HeadOut, Vec<f32>), EngineError> {
        let mut items = [BatchItem { cache, tokens, rows }];
        check_item(self, &items[0])?;
        let mut hidden = Vec::new();
        let out = self.run_to(&mut items, None, Some(&mut hidden), head)?;
        Ok((out, hidden))
    }

    /// `head`'s output of post-norm hidden rows (`per_seq` per sequence).
    fn outputs(&self, head: Head, xs: &[f32], per_seq: &[usize], qa: &mut ActScratch) -> HeadOut {
        output_rows(&self.pool, self.isa, head, xs, per_seq, qa, &self.output, self.cfg.final_softcap)
    }

    /// Embedding rows of `ids` as the first layer sees them (scaled by sqrt(d)).
    pub fn embed_rows(&self, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut x = embed(&self.file, &self.embd, ids)?;
        let s = (self.cfg.n_embd as f32).sqrt();
        x.iter_mut().for_each(|v| *v *= s);
        Ok(x)
    }

    fn mm(&self, x: &[f32], m: usize, qa: &mut ActScratch, jobs: &mut [MatmulJob]) {
        matmul(&self.pool, self.isa, x, m, qa, jobs);
    }
}

impl Model for Gemma3 {
    fn vocab_size(&self) -> usize {
        self.cfg.n_vocab
    }
    fn max_context(&self) -> usize {
        self.cfg.ctx
    }
    fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(
            self.cfg.n_layers,
            self.cfg.n_head_kv * self.cfg.head_dim,
            self.cfg.head_dim,
            capacity.min(self.cfg.ctx),
        )
    }

    fn forward(&self, cache: &mut KvCache, tokens: &[u32], rows: LogitRows) -> Result<Vec<f32>, EngineError> {
        forward_one(self, cache, tokens, rows)
    }

    fn forward_batch_argmax(&self, items: &mut [BatchItem]) -> Result<Vec<Vec<u32>>, EngineError> {
        for it in items.iter() {
            check_item(self, it)?;
        }
        Ok(self.run_to(items, None, None, Head::Argmax)?.argmax())
    }

    fn forward_batch(&self, items: &mut [BatchItem]) -> Result<Vec<Vec<f32>>, EngineError> {
        for it in items.iter() {
            check_item(self, it)?;
        }
        self.run(items, None, None)
    }

    fn forward_batch_hidden(&self, items: &mut [BatchItem]) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), EngineError> {
        for it in items.iter() {
            check_item(self, it)?;
        }
        let mut hidden = Vec::new();
        let logits = self.run(items, None, Some(&mut hidden))?;
        Ok((logits, split_hidden(&hidden, items, self.cfg.n_embd)))
    }

    fn forward_batch_hidden_argmax(
        &self,
        items: &mut [BatchItem],
    ) -> Result<(Vec<Vec<u32>>, Vec<Vec<f32>>), EngineError> {
        for it in items.iter() {
            check_item(self, it)?;
        }
        let mut hidden = Vec::new();
        let ids = self.run_to(items, None, Some(&mut hidden), Head::Argmax)?.argmax();
        Ok((ids, split_hidden(&hidden, items, self.cfg.n_embd)))
    }

    fn forward_hidden(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>), EngineError> {
        let (out, hidden) = self.run_one_hidden(cache, tokens, rows, Head::Logits)?;
        Ok((out.logits().pop().unwrap_or_default(), hidden))
    }

    fn forward_hidden_argmax(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        rows: LogitRows,
    ) -> Result<(Vec<u32>, Vec<f32>), EngineError> {
        let (out, hidden) = self.run_one_hidden(cache, tokens, rows, Head::Argmax)?;
        Ok((out.argmax().pop().unwrap_or_default(), hidden))
    }

    fn weight_bytes_per_token(&self) -> usize {
        self.weight_bytes
    }

    fn packed_bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].iter().map(|w| w.bytes()).sum::<usize>())
            .sum();
        layers + self.output.bytes()
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "gemma3: {} layers, hidden {}, ff {}, heads {}/{} x {}, vocab {}, window {}",
            c.n_layers, c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.head_dim, c.n_vocab, c.window
        )
    }
}

/// x += rmsnorm(o) row by row (Gemma 3's post-norms before the residual),
/// over the pool's threads for long passes.
fn add_normed(pool: &Pool, x: &mut [f32], o: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    pool.row_blocks(o, d, &|_, b| rmsnorm_rows(b, w, eps));
    let o = &*o;
    pool.row_blocks(x, d, &|r0, b| b.iter_mut().zip(&o[r0 * d..]).for_each(|(a, v)| *a += v));
}

/// A self-distilled MTP head for a Gemma 3 target (see `models::head`): one
/// sliding-window Gemma 3 block between the input projection and the target's
/// output rows of the draft vocabulary.
pub struct Gemma3Head {
    /// The block as a one-layer model: the target's embedding table, the
    /// head's final norm and the draft vocabulary's output rows.
    core: Gemma3,
    enorm: Vec<f32>,
    hnorm: Vec<f32>,
    eh_proj: PackedMatrix,
    vocab: Vec<u32>,
}

impl Gemma3Head {
    pub fn load(
        target: Arc<GgufFile>,
        head: &GgufFile,
        meta: super::head::HeadMeta,
        pool: Arc<Pool>,
        force_f32: bool,
    ) -> Result<Gemma3Head, EngineError> {
        let (mut cfg, embd) = Config::read(&WeightSource::new(&target)?)?;
        let d = cfg.n_embd;
        let mut w = WeightSource::new(head)?;
        w.force_f32 = force_f32;
        let layer = Layer::load(&w, "blk.0.", &cfg)?;
        let output = gather_rows(&target, &meta.vocab, d, force_f32)?;
        cfg.n_layers = 1; // layer 0 is a sliding-window layer
        cfg.n_vocab = meta.vocab.len();
        cfg.final_softcap = None;
        let core = Gemma3 {
            rope_local: Rope::new(cfg.head_dim, cfg.rope_base_local),
            rope_global: Rope::new(cfg.head_dim, cfg.rope_base_global),
            cfg,
            file: target,
            embd,
            layers: vec![layer],
            out_norm: w.vector("nextn.shared_head_norm.weight", d)?,
            output,
            pool,
            isa: isa(),
            weight_bytes: 0,
            scratch: ScratchCell::default(),
        };
        Ok(Gemma3Head {
            enorm: w.vector("nextn.enorm.weight", d)?,
            hnorm: w.vector("nextn.hnorm.weight", d)?,
            eh_proj: w.matrix("nextn.eh_proj.weight", d, 2 * d)?,
            core,
            vocab: meta.vocab,
        })
    }
}

/// The target's output rows of `vocab`, packed in their stored format.
fn gather_rows(target: &GgufFile, vocab: &[u32], d: usize, force_f32: bool) -> Result<PackedMatrix, EngineError> {
    let name = if target.header.tensor("output.weight").is_some() { "output.weight" } else { "token_embd.weight" };
    let t = target.header.tensor(name).ok_or_else(|| EngineError::MissingTensor(name.into()))?;
    if t.dims.len() != 2 || t.dims[0] != d as u64 {
        return Err(EngineError::TensorShape { name: name.into(), want: vec![d as u64, 0], found: t.dims.clone() });
    }
    let n_rows = t.dims[1] as usize;
    let row_bytes = t.n_bytes as usize / n_rows;
    let data = target.tensor_data(t);
    let mut rows = Vec::with_capacity(vocab.len() * row_bytes);
    for &id in vocab {
        let id = id as usize;
        if id >= n_rows {
            return Err(EngineError::TokenOutOfRange { id: id as u32, vocab: n_rows });
        }
        rows.extend_from_slice(&data[id * row_bytes..(id + 1) * row_bytes]);
    }
    let kind = if force_f32 { PackedKind::F32 } else { PackedKind::for_type(t.ty) };
    PackedMatrix::from_gguf_as(t.ty, &rows, vocab.len(), d, kind)
        .map_err(|e| EngineError::Tensor(name.into(), e.to_string()))
}

impl crate::spec::mtp::MtpHead for Gemma3Head {
    fn n_embd(&self) -> usize {
        self.core.cfg.n_embd
    }
    fn new_cache(&self, capacity: usize) -> KvCache {
        self.core.new_cache(capacity)
    }
    fn token(&self, index: usize) -> Option<u32> {
        self.vocab.get(index).copied()
    }
    fn forward(
        &self,
        cache: &mut KvCache,
        next: &[u32],
        hidden: &[f32],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>), EngineError> {
        let c = &self.core.cfg;
        let d = c.n_embd;
        let need = cache.len() + next.len();
        if need > cache.capacity {
            return Err(EngineError::ContextFull { need, capacity: cache.capacity });
        }
        let m = next.len();
        let cat = mtp_input(&self.core.embed_rows(next)?, hidden, &self.enorm, &self.hnorm, c.eps)?;
        let mut x = vec![0f32; m * d];
        let mut qa = ActScratch::default();
        self.core.mm(&cat, m, &mut qa, &mut [MatmulJob { w: &self.eh_proj, out: &mut x }]);
        let mut items = [BatchItem { cache, tokens: next, rows }];
        let mut hs = Vec::new();
        let mut logits = self.core.run(&mut items, Some(x), Some(&mut hs))?;
        Ok((logits.pop().unwrap_or_default(), hs))
    }
    fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let m = hidden.len() / self.core.cfg.n_embd;
        let xs = &hidden[..m * self.core.cfg.n_embd];
        let out = self.core.outputs(Head::Logits, xs, &[m], &mut ActScratch::default());
        out.logits().pop().unwrap_or_default()
    }
    fn window(&self) -> Option<usize> {
        Some(self.core.cfg.window)
    }
}
