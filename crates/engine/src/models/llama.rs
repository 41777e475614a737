//! Llama (GGUF arch `llama`, incl. Llama 3 rope scaling) and Qwen2 (`qwen2`:
//! Llama plus q/k/v biases and NEOX rope): the DeepSeek-R1 distills.
//!
//! Per layer: x += attn(rmsnorm(x)); x += down(silu(gate(h)) * up(h)) with
//! h = rmsnorm(x). Grouped-query attention, rope on the first `n_rot`
//! dimensions of each head: Llama GGUF files carry q/k rows permuted so that
//! rotation pairs are adjacent (ggml's normal mode; the HF loader permutes the
//! same way), Qwen2 rotates pairs (i, i + n_rot/2). Llama 3's scaling arrives
//! as per-pair frequency divisors (`rope_freqs.weight`). The output layer is
//! `output.weight`, or the embedding when tied.

use std::sync::Arc;

use specdec_gguf::GgufFile;
use specdec_kernels::ops::{rmsnorm_rows, rope_neox, rope_norm, rope_table, silu_mul, Rope};
use specdec_kernels::{isa, matmul, matmul_gated, ActScratch, Isa, MatmulJob, PackedMatrix, Pool};

use super::common::{
    attention, embed, embedding_table, finish_rows, forward_one, layer_caches, logit_rows, mark_appended, output_rows,
    pick_rows, project_qkv, reserve, store_kv, AttnShape, Head, HeadOut, Rows,
};
use crate::weights::WeightSource;
use crate::{check_item, BatchItem, EngineError, KvCache, LogitRows, Model};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i + 1).
    Norm,
    /// Pairs (i, i + n_rot/2).
    Neox,
}

pub struct Config {
    pub arch: String,
    pub n_embd: usize,
    pub n_layers: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Rotated dimensions per head.
    pub n_rot: usize,
    pub n_vocab: usize,
    pub ctx: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub tied_output: bool,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: PackedMatrix,
    wk: PackedMatrix,
    wv: PackedMatrix,
    /// q, k, v biases (Qwen2), empty when absent.
    bq: Vec<f32>,
    bk: Vec<f32>,
    bv: Vec<f32>,
    wo: PackedMatrix,
    ffn_norm: Vec<f32>,
    gate: PackedMatrix,
    up: PackedMatrix,
    down: PackedMatrix,
}

pub struct Llama {
    pub cfg: Config,
    file: Arc<GgufFile>,
    embd: specdec_gguf::TensorInfo,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: PackedMatrix,
    rope: Rope,
    pool: Arc<Pool>,
    isa: Isa,
    weight_bytes: usize,
}

fn meta_err(key: String, problem: String) -> EngineError {
    EngineError::Metadata { key, problem }
}

impl Llama {
    pub fn load(
        file: Arc<GgufFile>,
        pool: Arc<Pool>,
        force_f32: bool,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Llama, EngineError> {
        let mut w = WeightSource::new(&file)?;
        w.force_f32 = force_f32;
        let arch = w.arch.clone();
        let n_embd = w.usize("embedding_length", 1..=1 << 16)?;
        let n_layers = w.usize("block_count", 1..=512)?;
        let n_ff = w.usize("feed_forward_length", 1..=1 << 20)?;
        let n_head = w.usize("attention.head_count", 1..=1024)?;
        let n_head_kv = w.usize_or("attention.head_count_kv", 1..=1024, n_head)?;
        if n_head % n_head_kv != 0 {
            return Err(meta_err(
                format!("{arch}.attention.head_count_kv"),
                format!("{n_head_kv} does not divide head_count {n_head}"),
            ));
        }
        let head_dim = w.usize_or("attention.key_length", 1..=4096, n_embd / n_head)?;
        let v_dim = w.usize_or("attention.value_length", 1..=4096, head_dim)?;
        let n_rot = w.usize_or("rope.dimension_count", 1..=4096, head_dim)?;
        if v_dim != head_dim || n_rot > head_dim || n_rot % 2 != 0 || head_dim == 0 {
            return Err(meta_err(
                format!("{arch}.rope.dimension_count"),
                format!("key length {head_dim}, value length {v_dim} and rotated dims {n_rot}: need equal lengths and an even rotation within them"),
            ));
        }
        let ctx = w.usize("context_length", 1..=1 << 24)?;
        let eps = w.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        let rope_base = w.f32_or("rope.freq_base", 10_000.0)?;
        let rope_style = if arch == "llama" { RopeStyle::Norm } else { RopeStyle::Neox };
        let embd = embedding_table(&file, n_embd)?;
        let n_vocab = embd.dims[1] as usize;
        let tied_output = !w.has("output.weight");
        let cfg = Config {
            arch,
            n_embd,
            n_layers,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            n_vocab,
            ctx,
            eps,
            rope_base,
            rope_style,
            tied_output,
        };
        let (q_dim, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);
        let bias = |name: &str, len: usize| -> Result<Vec<f32>, EngineError> {
            if w.has(name) {
                w.vector(name, len)
            } else {
                Ok(Vec::new())
            }
        };
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            progress(i, n_layers + 1);
            let p = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: w.vector(&p("attn_norm.weight"), n_embd)?,
                wq: w.matrix(&p("attn_q.weight"), q_dim, n_embd)?,
                wk: w.matrix(&p("attn_k.weight"), kv_dim, n_embd)?,
                wv: w.matrix(&p("attn_v.weight"), kv_dim, n_embd)?,
                bq: bias(&p("attn_q.bias"), q_dim)?,
                bk: bias(&p("attn_k.bias"), kv_dim)?,
                bv: bias(&p("attn_v.bias"), kv_dim)?,
                wo: w.matrix(&p("attn_output.weight"), n_embd, q_dim)?,
                ffn_norm: w.vector(&p("ffn_norm.weight"), n_embd)?,
                gate: w.matrix(&p("ffn_gate.weight"), n_ff, n_embd)?,
                up: w.matrix(&p("ffn_up.weight"), n_ff, n_embd)?,
                down: w.matrix(&p("ffn_down.weight"), n_embd, n_ff)?,
            });
        }
        progress(n_layers, n_layers + 1);
        let out_norm = w.vector("output_norm.weight", n_embd)?;
        let out_name = if tied_output { "token_embd.weight" } else { "output.weight" };
        let output = w.matrix(out_name, n_vocab, n_embd)?;
        let mut rope = Rope::new(n_rot, rope_base);
        if w.has("rope_freqs.weight") {
            rope.freq_factors = w.vector("rope_freqs.weight", n_rot / 2)?;
            if rope.freq_factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
                return Err(EngineError::Tensor("rope_freqs.weight".into(), "factors must be positive".into()));
            }
        }
        progress(n_layers + 1, n_layers + 1);
        let mut weight_bytes = file.header.tensor(out_name).map(|t| t.n_bytes as usize).unwrap_or(0);
        weight_bytes += (embd.n_bytes / embd.dims[1]) as usize; // one embedding row
        for t in &file.header.tensors {
            if t.name.starts_with("blk.") {
                weight_bytes += t.n_bytes as usize;
            }
        }
        Ok(Llama { cfg, file, embd, layers, out_norm, output, rope, pool, isa: isa(), weight_bytes })
    }

    fn mm(&self, x: &[f32], m: usize, qa: &mut ActScratch, jobs: &mut [MatmulJob]) {
        matmul(&self.pool, self.isa, x, m, qa, jobs);
    }
}

fn add_bias(x: &mut [f32], b: &[f32]) {
    if !b.is_empty() {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(a, c)| *a += c);
        }
    }
}

impl Llama {
    /// The batched pass, ending in `head`'s output per sequence.
    fn run_to(&self, items: &mut [BatchItem], head: Head) -> Result<HeadOut, EngineError> {
        let c = &self.cfg;
        for it in items.iter() {
            check_item(self, it)?;
        }
        let rows = Rows::of(items);
        let m = rows.len();
        if m == 0 {
            return Ok(head.empty(items.len()));
        }
        let (d, hd) = (c.n_embd, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);

        // x[m x d] = embedding rows
        let mut x = embed(&self.file, &self.embd, &rows.ids)?;
        reserve(items);

        let mut qa = ActScratch::default();
        let mut h = vec![0f32; m * d];
        let mut q = vec![0f32; m * q_dim];
        let mut k = vec![0f32; m * kv_dim];
        let mut v = vec![0f32; m * kv_dim];
        let mut att = vec![0f32; m * q_dim];
        let mut o = vec![0f32; m * d];
        let mut gate = vec![0f32; m * c.n_ff];
        let mut up = vec![0f32; m * c.n_ff];
        // cos/sin of every row's position (n_rot/2 each)
        let (mut cos, mut sin, mut tc, mut ts) = (vec![], vec![], vec![], vec![]);
        for &pos in &rows.pos {
            rope_table(pos, &self.rope, &mut tc, &mut ts);
            cos.extend_from_slice(&tc);
            sin.extend_from_slice(&ts);
        }
        let half = c.n_rot / 2;
        let rotate = |head: &mut [f32], cs: &[f32], sn: &[f32]| match c.rope_style {
            RopeStyle::Norm => rope_norm(&mut head[..c.n_rot], cs, sn),
            RopeStyle::Neox => rope_neox(&mut head[..c.n_rot], cs, sn),
        };
        let scale = 1.0 / (hd as f32).sqrt();
        let shape = AttnShape { head_dim: hd, n_head: c.n_head, n_head_kv: c.n_head_kv, window: None };

        // The last layer's queries, attention and feed-forward run for the
        // logit rows only (a prefill's last row); the other rows need just
        // their keys and values there.
        let keep = logit_rows(items);
        let n_layers = self.layers.len();
        for (li, l) in self.layers.iter().enumerate() {
            let sub = if li + 1 == n_layers { keep.as_deref() } else { None };
            // attention block
            h.copy_from_slice(&x);
            rmsnorm_rows(&mut h, &l.attn_norm, c.eps);
            // mq: the rows that go on past keys and values (x shrinks to them).
            let wqkv = (&l.wq, &l.wk, &l.wv);
            let mq = project_qkv(&self.pool, self.isa, &h, m, &mut qa, wqkv, (&mut q, &mut k, &mut v), sub);
            if let Some(r) = sub {
                x = pick_rows(&x, r, d);
            }
            add_bias(&mut q[..mq * q_dim], &l.bq);
            add_bias(&mut k, &l.bk);
            add_bias(&mut v, &l.bv);
            let trig = |i: usize| (&cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half]);
            for i in 0..mq {
                let (cs, sn) = trig(sub.map_or(i, |r| r[i]));
                for head in q[i * q_dim..(i + 1) * q_dim].chunks_exact_mut(hd) {
                    rotate(head, cs, sn);
                    head.iter_mut().for_each(|v| *v *= scale);
                }
            }
            for i in 0..m {
                let (cs, sn) = trig(i);
                for head in k[i * kv_dim..(i + 1) * kv_dim].chunks_exact_mut(hd) {
                    rotate(head, cs, sn);
                }
                store_kv(items, &rows, li, i, &k[i * kv_dim..(i + 1) * kv_dim], &v[i * kv_dim..(i + 1) * kv_dim]);
            }
            if mq == 0 {
                continue; // the last layer of a pass with no logit rows
            }
            let qrows = sub.map(|r| rows.subset(r));
            let (qd, ad) = (&q[..mq * q_dim], &mut att[..mq * q_dim]);
            attention(&self.pool, self.isa, shape, &layer_caches(items, li), qrows.as_ref().unwrap_or(&rows), qd, ad);
            let o = &mut o[..mq * d];
            self.mm(&att[..mq * q_dim], mq, &mut qa, &mut [MatmulJob { w: &l.wo, out: o }]);
            x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);

            // feed-forward block
            let (h, gate, up) = (&mut h[..mq * d], &mut gate[..mq * c.n_ff], &mut up[..mq * c.n_ff]);
            h.copy_from_slice(&x);
            rmsnorm_rows(h, &l.ffn_norm, c.eps);
            matmul_gated(&self.pool, self.isa, h, mq, &mut qa, (&l.gate, &l.up), gate, up, silu_mul);
            self.mm(gate, mq, &mut qa, &mut [MatmulJob { w: &l.down, out: o }]);
            x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
        }

        // x holds the logit rows alone when the last layer ran for them alone.
        let (mut xs, per_seq) = match keep {
            None => finish_rows(items, &x, d),
            Some(_) => (x, mark_appended(items)),
        };
        rmsnorm_rows(&mut xs, &self.out_norm, c.eps);
        Ok(output_rows(&self.pool, self.isa, head, &xs, &per_seq, &mut qa, &self.output, None))
    }
}

impl Model for Llama {
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

    fn forward_batch(&self, items: &mut [BatchItem]) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(self.run_to(items, Head::Logits)?.logits())
    }

    fn forward_batch_argmax(&self, items: &mut [BatchItem]) -> Result<Vec<Vec<u32>>, EngineError> {
        Ok(self.run_to(items, Head::Argmax)?.argmax())
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
            "{}: {} layers, hidden {}, ff {}, heads {}/{} x {} (rope {} dims, {:?}, base {}), vocab {}{}",
            c.arch,
            c.n_layers,
            c.n_embd,
            c.n_ff,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_rot,
            c.rope_style,
            c.rope_base,
            c.n_vocab,
            if c.tied_output { ", tied output" } else { "" }
        )
    }
}
