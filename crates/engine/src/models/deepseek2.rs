//! DeepSeek-V3 / R1 (GGUF arch `deepseek2`, HF `deepseek_v3`): Multi-head
//! Latent Attention in the absorbed form, DeepSeekMoE with group-limited
//! routing, YaRN rope.
//!
//! Attention (absorbed, one path for prefill, decode and verification):
//!   q = q_b(rmsnorm(q_a(h))) (or q_proj(h)), per head [q_nope (dn); q_pe (dr)]
//!   [c; k_pe] = kv_a_mqa(h); c = rmsnorm(c); k_pe = rope(k_pe) (one shared head)
//!   the cache holds [c; k_pe] per position: kv_lora_rank + dr floats, nothing else
//!   q_abs_h = k_b[h] q_nope_h (Lkv); scores_h = scale * [q_abs_h; rope(q_pe_h)] . [c; k_pe]
//!   o_h = v_b[h] (softmax-weighted sum of c); out = wo [o_1 .. o_H]
//! Rope rotates adjacent pairs of the last dr dims (the checkpoints keep them
//! interleaved). YaRN becomes per-pair divisors of the angle; its mscale goes
//! into the softmax scale: mscale^2 / sqrt(dn + dr).
//!
//! FFN: dense SwiGLU in the first `leading_dense_block_count` layers, then MoE:
//!   s = sigmoid(router(h)) (or softmax), selection score s + exp_probs_b;
//!   groups ranked by the sum of their top-2 selection scores, the best
//!   `expert_group_used_count` kept, the top `expert_used_count` experts of
//!   those; weights s[idx], normalized if `expert_weights_norm`, times
//!   `expert_weights_scale`; y = sum_j w_j expert_j(h) (ascending expert id)
//!   + shared_expert(h).
//!
//! An MTP (nextn) layer after the main layers is not part of the target pass.

use std::sync::Arc;

use specdec_gguf::GgufFile;
use specdec_kernels::ops::{rmsnorm, rmsnorm_rows, rope_norm, rope_table, silu_mul, Rope};
use specdec_kernels::{isa, matmul, matmul_alloc, ActScratch, Isa, MatmulJob, PackedKind, PackedMatrix, Pool};

use super::common::{
    attention, embed, embedding_table, finish_rows, forward_one, layer_caches, mtp_input, reserve, split_hidden,
    split_logits, store_kv, AttnShape, Rows,
};
use crate::weights::WeightSource;
use crate::{check_item, BatchItem, EngineError, KvCache, LogitRows, Model};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    Softmax,
    Sigmoid,
}

pub struct Config {
    pub n_embd: usize,
    /// Main layers (the MTP layers of the file are not counted).
    pub n_layers: usize,
    pub n_nextn: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub q_lora_rank: usize,
    pub kv_lora_rank: usize,
    /// qk_nope_head_dim, qk_rope_head_dim, v_head_dim
    pub dn: usize,
    pub dr: usize,
    pub dv: usize,
    pub n_vocab: usize,
    pub ctx: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub attn_scale: f32,
    pub n_dense: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_expert_shared: usize,
    pub n_ff_expert: usize,
    pub n_group: usize,
    pub n_group_used: usize,
    pub expert_weights_scale: f32,
    pub expert_weights_norm: bool,
    pub gating: Gating,
}

struct Moe {
    router: PackedMatrix,
    /// exp_probs_b (sigmoid gating), empty when absent.
    bias: Vec<f32>,
    gate: Vec<PackedMatrix>,
    up: Vec<PackedMatrix>,
    down: Vec<PackedMatrix>,
    shared: Option<[PackedMatrix; 3]>,
}

enum Ffn {
    Dense(Box<[PackedMatrix; 3]>),
    Moe(Box<Moe>),
}

struct Layer {
    attn_norm: Vec<f32>,
    /// (q_a, q_a_norm, q_b), or q_proj alone.
    q_a: Option<(PackedMatrix, Vec<f32>)>,
    q_b: PackedMatrix,
    kv_a: PackedMatrix,
    kv_a_norm: Vec<f32>,
    /// Per head: k_b (Lkv rows x dn) and v_b (dv rows x Lkv).
    k_b: Vec<PackedMatrix>,
    v_b: Vec<PackedMatrix>,
    wo: PackedMatrix,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

pub struct DeepSeek2 {
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

fn meta(key: &str, problem: String) -> EngineError {
    EngineError::Metadata { key: format!("deepseek2.{key}"), problem }
}

/// YaRN as per-pair divisors of the rope angle (ramp between interpolated
/// and extrapolated frequencies; transformers' `_compute_yarn_parameters`).
pub fn yarn_factors(dim: usize, base: f64, factor: f64, orig_ctx: f64, beta_fast: f64, beta_slow: f64) -> Vec<f32> {
    let corr = |rot: f64| dim as f64 * (orig_ctx / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
    let low = corr(beta_fast).floor().max(0.0);
    let mut high = corr(beta_slow).ceil().min(dim as f64 - 1.0);
    if low == high {
        high += 0.001;
    }
    (0..dim / 2)
        .map(|i| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            (1.0 / (ramp / factor + (1.0 - ramp))) as f32
        })
        .collect()
}

impl DeepSeek2 {
    pub fn load(
        file: Arc<GgufFile>,
        pool: Arc<Pool>,
        force_f32: bool,
        progress: &dyn Fn(usize, usize),
    ) -> Result<DeepSeek2, EngineError> {
        Self::load_part(file, pool, force_f32, progress, false)
    }

    /// The main model, or (`mtp`) the first MTP module's decoder layer with
    /// its shared-head norm and the head, as a one-layer model (see `Mtp`).
    fn load_part(
        file: Arc<GgufFile>,
        pool: Arc<Pool>,
        force_f32: bool,
        progress: &dyn Fn(usize, usize),
        mtp: bool,
    ) -> Result<DeepSeek2, EngineError> {
        let mut w = WeightSource::new(&file)?;
        w.force_f32 = force_f32;
        let n_embd = w.usize("embedding_length", 1..=1 << 16)?;
        let n_blocks = w.usize("block_count", 1..=512)?;
        let n_nextn = w.usize_or("nextn_predict_layers", 0..=8, 0)?;
        if n_nextn >= n_blocks {
            return Err(meta("nextn_predict_layers", format!("{n_nextn} leaves no main layers of {n_blocks}")));
        }
        let n_layers = n_blocks - n_nextn;
        let n_ff = w.usize("feed_forward_length", 1..=1 << 20)?;
        let n_head = w.usize("attention.head_count", 1..=1024)?;
        let q_lora_rank = w.usize_or("attention.q_lora_rank", 0..=1 << 16, 0)?;
        let kv_lora_rank = w.usize("attention.kv_lora_rank", 1..=1 << 16)?;
        let dr = w.usize("rope.dimension_count", 2..=4096)?;
        let k_mla = w.usize("attention.key_length_mla", 1..=8192)?;
        let dv = w.usize("attention.value_length_mla", 1..=8192)?;
        if k_mla <= dr || dr % 2 != 0 {
            return Err(meta("attention.key_length_mla", format!("{k_mla} must exceed the even rope dims {dr}")));
        }
        let dn = k_mla - dr;
        let ctx = w.usize("context_length", 1..=1 << 24)?;
        let eps = w.f32_or("attention.layer_norm_rms_epsilon", 1e-6)?;
        let rope_base = w.f32_or("rope.freq_base", 10_000.0)?;
        let mut rope = Rope::new(dr, rope_base);
        let mut mscale = 1.0f64;
        match w.str_opt("rope.scaling.type") {
            None | Some("none") => {}
            Some("yarn") => {
                let factor = w.f32_or("rope.scaling.factor", 1.0)? as f64;
                let orig = w.usize("rope.scaling.original_context_length", 1..=1 << 24)? as f64;
                let fast = w.f32_or("rope.scaling.yarn_beta_fast", 32.0)? as f64;
                let slow = w.f32_or("rope.scaling.yarn_beta_slow", 1.0)? as f64;
                if factor > 1.0 {
                    rope.freq_factors = yarn_factors(dr, rope_base as f64, factor, orig, fast, slow);
                    // GGUF stores 0.1 * mscale_all_dim.
                    let log_mul = w.f32_or("rope.scaling.yarn_log_multiplier", 0.1)? as f64;
                    mscale = log_mul * factor.ln() + 1.0;
                }
            }
            Some(other) => return Err(meta("rope.scaling.type", format!("{other:?} is not supported (yarn, none)"))),
        }
        let attn_scale = (mscale * mscale / (k_mla as f64).sqrt()) as f32;
        let n_dense = w.usize_or("leading_dense_block_count", 0..=512, 0)?.min(n_layers);
        let moe = n_dense < n_layers;
        let n_expert = if moe { w.usize("expert_count", 1..=4096)? } else { 0 };
        let n_expert_used = if moe { w.usize("expert_used_count", 1..=n_expert.max(1))? } else { 0 };
        let n_expert_shared = w.usize_or("expert_shared_count", 0..=64, 0)?;
        let n_ff_expert = if moe { w.usize("expert_feed_forward_length", 1..=1 << 20)? } else { 0 };
        let n_group = w.usize_or("expert_group_count", 1..=n_expert.max(1), 1)?;
        let n_group_used = w.usize_or("expert_group_used_count", 1..=n_group, n_group)?;
        if moe && (n_expert % n_group != 0 || (n_group > 1 && n_expert / n_group < 2)) {
            return Err(meta(
                "expert_group_count",
                format!("{n_group} groups do not split {n_expert} experts in twos or more"),
            ));
        }
        if moe && n_expert_used > n_group_used * (n_expert / n_group) {
            return Err(meta(
                "expert_used_count",
                format!("{n_expert_used} exceeds the experts of {n_group_used} groups"),
            ));
        }
        let gating = match w.usize_or("expert_gating_func", 1..=2, 1)? {
            2 => Gating::Sigmoid,
            _ => Gating::Softmax,
        };
        let expert_weights_scale = w.f32_or("expert_weights_scale", 1.0)?;
        let expert_weights_norm = w.bool_or("expert_weights_norm", false)?;
        let embd = embedding_table(&file, n_embd)?;
        let n_vocab = embd.dims[1] as usize;
        let cfg = Config {
            n_embd,
            n_layers,
            n_nextn,
            n_ff,
            n_head,
            q_lora_rank,
            kv_lora_rank,
            dn,
            dr,
            dv,
            n_vocab,
            ctx,
            eps,
            rope_base,
            attn_scale,
            n_dense,
            n_expert,
            n_expert_used,
            n_expert_shared,
            n_ff_expert,
            n_group,
            n_group_used,
            expert_weights_scale,
            expert_weights_norm,
            gating,
        };
        let f32_kind = |t: &str, data: Vec<f32>, n: usize, k: usize| -> Result<PackedMatrix, EngineError> {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            PackedMatrix::from_gguf_as(specdec_gguf::GgmlType::F32, &bytes, n, k, PackedKind::F32)
                .map_err(|e| EngineError::Tensor(t.into(), e.to_string()))
        };
        let (lkv, h) = (kv_lora_rank, n_head);
        if mtp && n_nextn == 0 {
            return Err(meta("nextn_predict_layers", "the model has no MTP module (nextn layers)".into()));
        }
        let layer_ids = if mtp { n_layers..n_layers + 1 } else { 0..n_layers };
        let mut layers = Vec::with_capacity(n_layers);
        for i in layer_ids {
            progress(i, n_layers + 1);
            let p = |s: &str| format!("blk.{i}.{s}");
            let (q_a, q_b) = if q_lora_rank > 0 {
                let qa = w.matrix(&p("attn_q_a.weight"), q_lora_rank, n_embd)?;
                let qn = w.vector(&p("attn_q_a_norm.weight"), q_lora_rank)?;
                (Some((qa, qn)), w.matrix(&p("attn_q_b.weight"), h * k_mla, q_lora_rank)?)
            } else {
                (None, w.matrix(&p("attn_q.weight"), h * k_mla, n_embd)?)
            };
            // k_b: per head Lkv rows of dn; v_b: per head dv rows of Lkv (small: kept in f32).
            let kb = w.tensor_f32(&p("attn_k_b.weight"), &[dn, lkv, h])?;
            let vb = w.tensor_f32(&p("attn_v_b.weight"), &[lkv, dv, h])?;
            let k_b = (0..h)
                .map(|j| f32_kind(&p("attn_k_b.weight"), kb[j * lkv * dn..(j + 1) * lkv * dn].to_vec(), lkv, dn))
                .collect::<Result<Vec<_>, _>>()?;
            let v_b = (0..h)
                .map(|j| f32_kind(&p("attn_v_b.weight"), vb[j * dv * lkv..(j + 1) * dv * lkv].to_vec(), dv, lkv))
                .collect::<Result<Vec<_>, _>>()?;
            let ffn = if i < n_dense {
                Ffn::Dense(Box::new([
                    w.matrix(&p("ffn_gate.weight"), n_ff, n_embd)?,
                    w.matrix(&p("ffn_up.weight"), n_ff, n_embd)?,
                    w.matrix(&p("ffn_down.weight"), n_embd, n_ff)?,
                ]))
            } else {
                let fs = n_ff_expert * n_expert_shared;
                Ffn::Moe(Box::new(Moe {
                    router: w.matrix(&p("ffn_gate_inp.weight"), n_expert, n_embd)?,
                    bias: if w.has(&p("exp_probs_b.bias")) {
                        w.vector(&p("exp_probs_b.bias"), n_expert)?
                    } else {
                        vec![]
                    },
                    gate: w.experts(&p("ffn_gate_exps.weight"), n_expert, n_ff_expert, n_embd)?,
                    up: w.experts(&p("ffn_up_exps.weight"), n_expert, n_ff_expert, n_embd)?,
                    down: w.experts(&p("ffn_down_exps.weight"), n_expert, n_embd, n_ff_expert)?,
                    shared: if n_expert_shared > 0 {
                        Some([
                            w.matrix(&p("ffn_gate_shexp.weight"), fs, n_embd)?,
                            w.matrix(&p("ffn_up_shexp.weight"), fs, n_embd)?,
                            w.matrix(&p("ffn_down_shexp.weight"), n_embd, fs)?,
                        ])
                    } else {
                        None
                    },
                }))
            };
            layers.push(Layer {
                attn_norm: w.vector(&p("attn_norm.weight"), n_embd)?,
                q_a,
                q_b,
                kv_a: w.matrix(&p("attn_kv_a_mqa.weight"), lkv + dr, n_embd)?,
                kv_a_norm: w.vector(&p("attn_kv_a_norm.weight"), lkv)?,
                k_b,
                v_b,
                wo: w.matrix(&p("attn_output.weight"), n_embd, h * dv)?,
                ffn_norm: w.vector(&p("ffn_norm.weight"), n_embd)?,
                ffn,
            });
        }
        progress(n_layers, n_layers + 1);
        let norm_name =
            if mtp { format!("blk.{n_layers}.nextn.shared_head_norm.weight") } else { "output_norm.weight".into() };
        let out_norm = w.vector(&norm_name, n_embd)?;
        let own_head = format!("blk.{n_layers}.nextn.shared_head_head.weight");
        let out_name = if mtp && w.has(&own_head) {
            own_head.as_str()
        } else if w.has("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let output = w.matrix(out_name, n_vocab, n_embd)?;
        progress(n_layers + 1, n_layers + 1);
        // Bytes one decode step reads: everything in the main layers except
        // the experts it does not route to.
        let mut weight_bytes = file.header.tensor(out_name).map(|t| t.n_bytes as usize).unwrap_or(0);
        weight_bytes += (embd.n_bytes / embd.dims[1]) as usize;
        for t in &file.header.tensors {
            let layer =
                t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|l| l.parse::<usize>().ok());
            if layer.is_some_and(|l| l < n_layers) {
                let b = t.n_bytes as usize;
                weight_bytes += if t.name.contains("_exps.") { b / n_expert.max(1) * n_expert_used } else { b };
            }
        }
        Ok(DeepSeek2 { cfg, file, embd, layers, out_norm, output, rope, pool, isa: isa(), weight_bytes })
    }

    /// A batched pass: `x0` replaces the token embeddings (the MTP module's
    /// combined input); `hidden` receives every row's post-norm hidden state.
    fn run(
        &self,
        items: &mut [BatchItem],
        x0: Option<Vec<f32>>,
        hidden: Option<&mut Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let c = &self.cfg;
        for it in items.iter() {
            check_item(self, it)?;
        }
        let rows = Rows::of(items);
        let m = rows.len();
        if m == 0 {
            return Ok(items.iter().map(|_| Vec::new()).collect());
        }
        let (d, h, lkv, dn, dr, dv) = (c.n_embd, c.n_head, c.kv_lora_rank, c.dn, c.dr, c.dv);
        let qk = dn + dr; // per-head width of q
        let kw = lkv + dr; // cache width: [latent; rope key]

        let mut x = match x0 {
            Some(x) => x,
            None => self.embed(&rows.ids)?,
        };
        reserve(items);

        let mut qa = ActScratch::default();
        let mut hn = vec![0f32; m * d];
        let mut q = vec![0f32; m * h * qk];
        let mut kv = vec![0f32; m * kw];
        let mut qfull = vec![0f32; m * h * kw];
        let mut att = vec![0f32; m * h * kw];
        let mut oh = vec![0f32; m * h * dv];
        let mut o = vec![0f32; m * d];
        let (mut qn, mut qabs, mut olat, mut ov) =
            (vec![0f32; m * dn], vec![0f32; m * lkv], vec![0f32; m * lkv], vec![0f32; m * dv]);
        let (mut cos, mut sin, mut tc, mut ts) = (vec![], vec![], vec![], vec![]);
        for &pos in &rows.pos {
            rope_table(pos, &self.rope, &mut tc, &mut ts);
            cos.extend_from_slice(&tc);
            sin.extend_from_slice(&ts);
        }
        let half = dr / 2;
        let shape = AttnShape { head_dim: kw, n_head: h, n_head_kv: 1, window: None };

        for (li, l) in self.layers.iter().enumerate() {
            // attention block
            hn.copy_from_slice(&x);
            rmsnorm_rows(&mut hn, &l.attn_norm, c.eps);
            match &l.q_a {
                Some((wqa, qnorm)) => {
                    let mut ql = vec![0f32; m * wqa.n];
                    self.mm(
                        &hn,
                        m,
                        &mut qa,
                        &mut [MatmulJob { w: wqa, out: &mut ql }, MatmulJob { w: &l.kv_a, out: &mut kv }],
                    );
                    rmsnorm_rows(&mut ql, qnorm, c.eps);
                    self.mm(&ql, m, &mut qa, &mut [MatmulJob { w: &l.q_b, out: &mut q }]);
                }
                None => self.mm(
                    &hn,
                    m,
                    &mut qa,
                    &mut [MatmulJob { w: &l.q_b, out: &mut q }, MatmulJob { w: &l.kv_a, out: &mut kv }],
                ),
            }
            for i in 0..m {
                let (cs, sn) = (&cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half]);
                let row = &mut kv[i * kw..(i + 1) * kw];
                rmsnorm(&mut row[..lkv], &l.kv_a_norm, c.eps);
                rope_norm(&mut row[lkv..], cs, sn);
                store_kv(items, &rows, li, i, &kv[i * kw..(i + 1) * kw], &[]);
                for hh in 0..h {
                    rope_norm(&mut q[(i * h + hh) * qk + dn..(i * h + hh + 1) * qk], cs, sn);
                }
            }
            // Absorb k_b into the query: q_abs_h = k_b[h] q_nope_h, head by head.
            for hh in 0..h {
                for i in 0..m {
                    qn[i * dn..(i + 1) * dn].copy_from_slice(&q[(i * h + hh) * qk..(i * h + hh) * qk + dn]);
                }
                self.mm(&qn, m, &mut qa, &mut [MatmulJob { w: &l.k_b[hh], out: &mut qabs }]);
                for i in 0..m {
                    let dst = &mut qfull[(i * h + hh) * kw..(i * h + hh + 1) * kw];
                    dst[..lkv].copy_from_slice(&qabs[i * lkv..(i + 1) * lkv]);
                    dst[lkv..].copy_from_slice(&q[(i * h + hh) * qk + dn..(i * h + hh + 1) * qk]);
                    dst.iter_mut().for_each(|v| *v *= c.attn_scale);
                }
            }
            // One shared key head [c; k_pe]; the values are the latent c (the
            // first Lkv of each key row; the rope part of the output is unused).
            attention(&self.pool, self.isa, shape, &layer_caches(items, li), &rows, &qfull, &mut att);
            for hh in 0..h {
                for i in 0..m {
                    olat[i * lkv..(i + 1) * lkv].copy_from_slice(&att[(i * h + hh) * kw..(i * h + hh) * kw + lkv]);
                }
                self.mm(&olat, m, &mut qa, &mut [MatmulJob { w: &l.v_b[hh], out: &mut ov }]);
                for i in 0..m {
                    oh[(i * h + hh) * dv..(i * h + hh + 1) * dv].copy_from_slice(&ov[i * dv..(i + 1) * dv]);
                }
            }
            self.mm(&oh, m, &mut qa, &mut [MatmulJob { w: &l.wo, out: &mut o }]);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            // feed-forward block
            hn.copy_from_slice(&x);
            rmsnorm_rows(&mut hn, &l.ffn_norm, c.eps);
            match &l.ffn {
                Ffn::Dense(wts) => self.swiglu(&hn, m, [&wts[0], &wts[1], &wts[2]], &mut qa, &mut o),
                Ffn::Moe(moe) => self.moe(&hn, m, moe, &mut qa, &mut o),
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }

        if let Some(hs) = hidden {
            hs.clear();
            hs.extend_from_slice(&x);
            rmsnorm_rows(hs, &self.out_norm, c.eps);
        }
        let (mut xs, per_seq) = finish_rows(items, &x, d);
        rmsnorm_rows(&mut xs, &self.out_norm, c.eps);
        let n_out: usize = per_seq.iter().sum();
        let logits = matmul_alloc(&self.pool, self.isa, &xs, n_out, &mut qa, &self.output);
        Ok(split_logits(logits, &per_seq, c.n_vocab))
    }

    /// Logits of `m` post-norm hidden rows.
    fn logits(&self, xs: &[f32], m: usize) -> Vec<f32> {
        matmul_alloc(&self.pool, self.isa, xs, m, &mut ActScratch::default(), &self.output)
    }

    /// Embedding rows of `ids`.
    fn embed(&self, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
        embed(&self.file, &self.embd, ids)
    }

    fn mm(&self, x: &[f32], m: usize, qa: &mut ActScratch, jobs: &mut [MatmulJob]) {
        matmul(&self.pool, self.isa, x, m, qa, jobs);
    }

    /// SwiGLU of `x` (m rows) through (gate, up, down) into `out` (m x d).
    fn swiglu(&self, x: &[f32], m: usize, w: [&PackedMatrix; 3], qa: &mut ActScratch, out: &mut [f32]) {
        let f = w[0].n;
        let (mut g, mut u) = (vec![0f32; m * f], vec![0f32; m * f]);
        self.mm(x, m, qa, &mut [MatmulJob { w: w[0], out: &mut g }, MatmulJob { w: w[1], out: &mut u }]);
        silu_mul(&mut g, &u);
        self.mm(&g, m, qa, &mut [MatmulJob { w: w[2], out }]);
    }

    /// Experts chosen for one row and their weights, in ascending expert id.
    fn route(&self, logits: &[f32], bias: &[f32]) -> Vec<(usize, f32)> {
        let c = &self.cfg;
        let s: Vec<f32> = match c.gating {
            Gating::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
            Gating::Softmax => {
                let mut v = logits.to_vec();
                let mx = v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                v.iter_mut().for_each(|x| *x = (*x - mx).exp());
                let sum: f32 = v.iter().sum();
                v.iter_mut().for_each(|x| *x /= sum);
                v
            }
        };
        let mut sel: Vec<f32> = s.iter().enumerate().map(|(j, &v)| v + bias.get(j).copied().unwrap_or(0.0)).collect();
        if c.n_group > 1 && c.n_group_used < c.n_group {
            let per = c.n_expert / c.n_group;
            let mut groups: Vec<(f32, usize)> = (0..c.n_group)
                .map(|g| {
                    let mut v: Vec<f32> = sel[g * per..(g + 1) * per].to_vec();
                    v.sort_by(|a, b| b.total_cmp(a));
                    (v[0] + v[1], g)
                })
                .collect();
            groups.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, g) in &groups[c.n_group_used..] {
                sel[g * per..(g + 1) * per].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
            }
        }
        let mut order: Vec<usize> = (0..c.n_expert).collect();
        order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
        let mut chosen: Vec<(usize, f32)> = order[..c.n_expert_used].iter().map(|&j| (j, s[j])).collect();
        if c.expert_weights_norm {
            let sum: f32 = chosen.iter().map(|x| x.1).sum::<f32>() + 1e-20;
            chosen.iter_mut().for_each(|x| x.1 /= sum);
        }
        chosen.iter_mut().for_each(|x| x.1 *= c.expert_weights_scale);
        chosen.sort_by_key(|x| x.0);
        chosen
    }

    fn moe(&self, x: &[f32], m: usize, moe: &Moe, qa: &mut ActScratch, out: &mut [f32]) {
        let c = &self.cfg;
        let d = c.n_embd;
        let mut logits = vec![0f32; m * c.n_expert];
        self.mm(x, m, qa, &mut [MatmulJob { w: &moe.router, out: &mut logits }]);
        let routes: Vec<Vec<(usize, f32)>> =
            (0..m).map(|i| self.route(&logits[i * c.n_expert..(i + 1) * c.n_expert], &moe.bias)).collect();
        // Each expert runs once over the rows routed to it; results land in
        // per-(row, slot) buffers and are summed per row in slot order, so a
        // row's output does not depend on the other rows.
        let k = c.n_expert_used;
        let mut ys = vec![0f32; m * k * d];
        for e in 0..c.n_expert {
            let rows: Vec<(usize, usize)> = routes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.iter().position(|&(j, _)| j == e).map(|slot| (i, slot)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut xe = Vec::with_capacity(rows.len() * d);
            for &(i, _) in &rows {
                xe.extend_from_slice(&x[i * d..(i + 1) * d]);
            }
            let mut ye = vec![0f32; rows.len() * d];
            self.swiglu(&xe, rows.len(), [&moe.gate[e], &moe.up[e], &moe.down[e]], qa, &mut ye);
            for (r, &(i, slot)) in rows.iter().enumerate() {
                ys[(i * k + slot) * d..(i * k + slot + 1) * d].copy_from_slice(&ye[r * d..(r + 1) * d]);
            }
        }
        let mut shared = vec![0f32; m * d];
        if let Some(sh) = &moe.shared {
            self.swiglu(x, m, [&sh[0], &sh[1], &sh[2]], qa, &mut shared);
        }
        for i in 0..m {
            let o = &mut out[i * d..(i + 1) * d];
            o.fill(0.0);
            for (slot, &(_, wgt)) in routes[i].iter().enumerate() {
                let y = &ys[(i * k + slot) * d..(i * k + slot + 1) * d];
                o.iter_mut().zip(y).for_each(|(a, b)| *a += wgt * b);
            }
            o.iter_mut().zip(&shared[i * d..(i + 1) * d]).for_each(|(a, b)| *a += b);
        }
    }
}

impl Model for DeepSeek2 {
    fn vocab_size(&self) -> usize {
        self.cfg.n_vocab
    }
    fn max_context(&self) -> usize {
        self.cfg.ctx
    }
    fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::keys_only(
            self.cfg.n_layers,
            self.cfg.kv_lora_rank + self.cfg.dr,
            self.cfg.kv_lora_rank + self.cfg.dr,
            capacity.min(self.cfg.ctx),
        )
    }

    fn forward(&self, cache: &mut KvCache, tokens: &[u32], rows: LogitRows) -> Result<Vec<f32>, EngineError> {
        forward_one(self, cache, tokens, rows)
    }

    fn forward_batch(&self, items: &mut [BatchItem]) -> Result<Vec<Vec<f32>>, EngineError> {
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

    fn forward_hidden(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>), EngineError> {
        let mut items = [BatchItem { cache, tokens, rows }];
        let mut hidden = Vec::new();
        let mut logits = self.run(&mut items, None, Some(&mut hidden))?;
        Ok((logits.pop().unwrap_or_default(), hidden))
    }

    fn weight_bytes_per_token(&self) -> usize {
        self.weight_bytes
    }

    fn packed_bytes_per_token(&self) -> usize {
        let c = &self.cfg;
        let mut total = self.output.bytes();
        for l in &self.layers {
            total += l.q_b.bytes() + l.kv_a.bytes() + l.wo.bytes();
            total += l.q_a.as_ref().map_or(0, |(w, _)| w.bytes());
            total += l.k_b.iter().chain(&l.v_b).map(|w| w.bytes()).sum::<usize>();
            total += match &l.ffn {
                Ffn::Dense(w) => w.iter().map(|w| w.bytes()).sum(),
                Ffn::Moe(moe) => {
                    let per: usize = moe.gate.iter().chain(&moe.up).chain(&moe.down).map(|w| w.bytes()).sum::<usize>()
                        / c.n_expert.max(1);
                    moe.router.bytes()
                        + per * c.n_expert_used
                        + moe.shared.as_ref().map_or(0, |s| s.iter().map(|w| w.bytes()).sum())
                }
            };
        }
        total
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "deepseek2: {} layers (+{} MTP), hidden {}, heads {} (MLA: q_lora {}, kv_lora {}, nope {}, rope {}, v {}; cache {} floats/token/layer), {} dense layers, experts {} (used {}, shared {}, groups {}/{}, {:?}), vocab {}",
            c.n_layers,
            c.n_nextn,
            c.n_embd,
            c.n_head,
            c.q_lora_rank,
            c.kv_lora_rank,
            c.dn,
            c.dr,
            c.dv,
            c.kv_lora_rank + c.dr,
            c.n_dense,
            c.n_expert,
            c.n_expert_used,
            c.n_expert_shared,
            c.n_group_used,
            c.n_group,
            c.gating,
            c.n_vocab
        )
    }
}

/// DeepSeek's Multi-Token-Prediction module: from the target's post-norm
/// hidden state h at position i and the embedding of the token at i + 1, it
/// predicts the token at i + 2:
///   x = eh_proj [enorm(emb(t_{i+1})); hnorm(h_i)]   (embedding first)
///   x = decoder layer (MLA + MoE, its own cache, position i)
///   h' = shared_head_norm(x); logits = head(h')
/// Chaining feeds h' back with the drafted token at position i + 1.
pub struct Mtp {
    core: DeepSeek2,
    enorm: Vec<f32>,
    hnorm: Vec<f32>,
    eh_proj: PackedMatrix,
}

impl Mtp {
    pub fn load(file: Arc<GgufFile>, pool: Arc<Pool>, force_f32: bool) -> Result<Mtp, EngineError> {
        let arch = WeightSource::new(&file)?.arch;
        if arch != "deepseek2" {
            return Err(EngineError::Unsupported(format!("architecture {arch} has no MTP module")));
        }
        let core = DeepSeek2::load_part(file.clone(), pool, force_f32, &|_, _| {}, true)?;
        let mut w = WeightSource::new(&file)?;
        w.force_f32 = force_f32;
        let (d, l) = (core.cfg.n_embd, core.cfg.n_layers);
        let p = |s: &str| format!("blk.{l}.nextn.{s}");
        Ok(Mtp {
            enorm: w.vector(&p("enorm.weight"), d)?,
            hnorm: w.vector(&p("hnorm.weight"), d)?,
            eh_proj: w.matrix(&p("eh_proj.weight"), d, 2 * d)?,
            core,
        })
    }
}

impl crate::spec::mtp::MtpHead for Mtp {
    fn n_embd(&self) -> usize {
        self.core.cfg.n_embd
    }
    fn new_cache(&self, capacity: usize) -> KvCache {
        self.core.new_cache(capacity)
    }
    fn token(&self, index: usize) -> Option<u32> {
        (index < self.core.cfg.n_vocab).then_some(index as u32)
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
        let m = next.len();
        let cat = mtp_input(&self.core.embed(next)?, hidden, &self.enorm, &self.hnorm, c.eps)?;
        let mut x = vec![0f32; m * d];
        let mut qa = ActScratch::default();
        matmul(&self.core.pool, self.core.isa, &cat, m, &mut qa, &mut [MatmulJob { w: &self.eh_proj, out: &mut x }]);
        let mut items = [BatchItem { cache, tokens: next, rows }];
        let mut hs = Vec::new();
        let mut logits = self.core.run(&mut items, Some(x), Some(&mut hs))?;
        Ok((logits.pop().unwrap_or_default(), hs))
    }
    fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let m = hidden.len() / self.core.cfg.n_embd;
        self.core.logits(&hidden[..m * self.core.cfg.n_embd], m)
    }
}
