//! The head in candle, for training: the same computation as the engine's
//! `Gemma3Head` (models/gemma3.rs), which drafts at inference.
//!
//! Shapes: B sequences of L positions, d = n_embd, H query heads of hd,
//! Hkv key/value heads, N draft-vocabulary rows.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use specdec_engine::models::head::{block_tensors, HeadShape};
use specdec_engine::rng::Rng;

use crate::DistillError;

/// Every trainable tensor by its GGUF name, with GGUF dims (ggml order:
/// [k, n] for a matrix of n rows by k inputs; the candle tensor is (n, k)).
pub struct Params {
    pub vars: BTreeMap<String, Var>,
    pub dims: BTreeMap<String, Vec<usize>>,
}

pub const ENORM: &str = "nextn.enorm.weight";
pub const HNORM: &str = "nextn.hnorm.weight";
pub const EH_PROJ: &str = "nextn.eh_proj.weight";
pub const OUT_NORM: &str = "nextn.shared_head_norm.weight";

/// (name, GGUF dims) of every head tensor, in file order.
pub fn tensor_list(s: &HeadShape) -> Vec<(String, Vec<usize>)> {
    let d = s.n_embd;
    let mut v = vec![(ENORM.to_string(), vec![d]), (HNORM.to_string(), vec![d]), (EH_PROJ.to_string(), vec![2 * d, d])];
    v.extend(block_tensors(s).into_iter().map(|(n, dims)| (format!("blk.0.{n}"), dims)));
    v.push((OUT_NORM.to_string(), vec![d]));
    v
}

/// candle shape of GGUF dims (reversed).
pub fn candle_shape(dims: &[usize]) -> Vec<usize> {
    dims.iter().rev().copied().collect()
}

/// A target tensor (by GGUF name and dims) as f32: where the head starts.
pub type InitFn<'a> = dyn Fn(&str, &[usize]) -> Result<Vec<f32>, DistillError> + 'a;

impl Params {
    /// Starting point: the block from the target's layer (`init` gives its
    /// f32 tensors by name) with its two post-norms scaled down by 10 (the
    /// block starts close to the identity), norms 1 elsewhere, and eh_proj =
    /// [I/2 I] plus small noise (x = enorm(e)/2 + hnorm(h)): at the start
    /// the head passes the target's own hidden state on.
    pub fn init(s: &HeadShape, init: &InitFn, seed: u64, dev: &Device) -> Result<Params, DistillError> {
        let d = s.n_embd;
        let mut rng = Rng::new(seed);
        let mut vars = BTreeMap::new();
        let mut dims = BTreeMap::new();
        for (name, gd) in tensor_list(s) {
            let n: usize = gd.iter().product();
            let data = match name.as_str() {
                ENORM | HNORM => vec![1f32; n],
                EH_PROJ => {
                    let mut w = vec![0f32; n];
                    for (i, v) in w.iter_mut().enumerate() {
                        let (row, col) = (i / (2 * d), i % (2 * d));
                        let noise = (rng.uniform() as f32 - 0.5) * 0.02;
                        let eye = match (col == row, col == row + d) {
                            (true, _) => 0.5,
                            (_, true) => 1.0,
                            _ => 0.0,
                        };
                        *v = noise + eye;
                    }
                    w
                }
                OUT_NORM => vec![1f32; n],
                _ if name.contains("post_") => init(&name, &gd)?.into_iter().map(|v| v * 0.1).collect(),
                _ => init(&name, &gd)?,
            };
            let t = Tensor::from_vec(data, candle_shape(&gd), dev)?;
            vars.insert(name.clone(), Var::from_tensor(&t)?);
            dims.insert(name, gd);
        }
        Ok(Params { vars, dims })
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.vars[name].as_tensor()
    }

    pub fn count(&self) -> usize {
        self.dims.values().map(|d| d.iter().product::<usize>()).sum()
    }
}

/// x / sqrt(mean(x^2) + eps) * w over the last dimension.
fn rmsnorm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?.broadcast_mul(w)
}

/// x (.., k) times W^T for W (n, k).
fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("rank >= 1");
    let rows = x.elem_count() / k;
    let y = x.reshape((rows, k))?.matmul(&w.t()?)?;
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out)
}

/// NEOX rope on (B, heads, L, hd): pairs (i, i + hd/2).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let half = hd / 2;
    let a = x.narrow(D::Minus1, 0, half)?;
    let b = x.narrow(D::Minus1, half, half)?;
    let lo = (a.broadcast_mul(cos)? - b.broadcast_mul(sin)?)?;
    let hi = (a.broadcast_mul(sin)? + b.broadcast_mul(cos)?)?;
    Tensor::cat(&[&lo, &hi], D::Minus1)
}

/// cos and sin tables (L, hd/2) of positions 0..L.
pub fn rope_tables(s: &HeadShape, l: usize, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = s.head_dim / 2;
    let (mut c, mut sn) = (Vec::with_capacity(l * half), Vec::with_capacity(l * half));
    for pos in 0..l {
        for i in 0..half {
            let theta = pos as f64 * (s.rope_base as f64).powf(-2.0 * i as f64 / s.head_dim as f64);
            c.push(theta.cos() as f32);
            sn.push(theta.sin() as f32);
        }
    }
    Ok((Tensor::from_vec(c, (l, half), dev)?, Tensor::from_vec(sn, (l, half), dev)?))
}

/// Additive mask (L, L) of a depth-t pass over the rows of pass 1: the row
/// at position j is the (t-1)-th chained row after the verified row
/// j - (t - 1), and sees verified rows up to that one only (within the
/// sliding window). Depth 1 is the causal mask within the window.
pub fn chain_mask(l: usize, window: usize, depth: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let back = depth.max(1) - 1;
    let mut m = vec![0f32; l * l];
    for i in 0..l {
        for j in 0..l {
            if j + back > i || i - j >= window {
                m[i * l + j] = -1e30;
            }
        }
    }
    Tensor::from_vec(m, (l, l), dev)
}

/// Masks of depths 1..=depth (`chain_mask`), what `Inputs::masks` holds.
pub fn masks(l: usize, window: usize, depth: usize, dev: &Device) -> candle_core::Result<Vec<Tensor>> {
    (1..=depth.max(1)).map(|t| chain_mask(l, window, t, dev)).collect()
}

/// Everything a forward pass needs besides the parameters.
pub struct Inputs {
    /// (B, L, d): the target's scaled embedding of the next token.
    pub emb: Tensor,
    /// (B, L, d): the target's post-norm hidden state.
    pub hidden: Tensor,
    pub cos: Tensor,
    pub sin: Tensor,
    /// `masks(L, window, depth)`: one per unrolled depth (at least one).
    pub masks: Vec<Tensor>,
}

/// `t` (B, L, ..) moved `by` positions later along dim 1, zeros in front.
fn shift(t: &Tensor, dim: usize, by: usize) -> candle_core::Result<Tensor> {
    if by == 0 {
        return Ok(t.clone());
    }
    let l = t.dim(dim)?;
    t.narrow(dim, 0, l - by)?.pad_with_zeros(dim, by, 0)
}

/// Log-probabilities over the draft vocabulary, (B, L, N): the head run on
/// the target's hidden states (what drafts the first token).
pub fn forward(p: &Params, s: &HeadShape, out_rows: &Tensor, x: &Inputs) -> candle_core::Result<Tensor> {
    Ok(forward_unrolled(p, s, out_rows, x, 1)?.remove(0))
}

/// The head unrolled as it drafts (EAGLE-3's training-time test), one log q
/// (B, L, N) per depth t = 1..=depth. Depth 1 reads the target's hidden
/// states; depth t at position j reads the head's own post-norm output of
/// depth t-1 at position j-1 (as chaining does at inference) and attends to
/// the verified rows up to j-(t-1) plus the chained rows of depths 2..t at
/// positions j-(t-2)..j: exactly the cache a chained draft sees. Rows
/// j < t-1 of depth t have no such chain and are garbage (the loss skips
/// them).
pub fn forward_unrolled(
    p: &Params,
    s: &HeadShape,
    out_rows: &Tensor,
    x: &Inputs,
    depth: usize,
) -> candle_core::Result<Vec<Tensor>> {
    let (b, l, _) = x.emb.dims3()?;
    let (h, hkv, hd) = (s.n_head, s.n_head_kv, s.head_dim);
    let blk = |n: &str| p.get(&format!("blk.0.{n}"));
    let rep = h / hkv;
    // Grouped-query: each key/value head serves h / hkv query heads.
    let expand = |t: Tensor| -> candle_core::Result<Tensor> {
        if rep == 1 {
            return Ok(t);
        }
        t.unsqueeze(2)?.broadcast_as((b, hkv, rep, l, hd))?.reshape((b, h, l, hd))
    };
    // Keys and values (B, H, L, hd) of every depth so far.
    let mut kv: Vec<(Tensor, Tensor)> = Vec::new();
    let mut out = Vec::with_capacity(depth);
    let mut hidden = x.hidden.clone();
    // Every depth reads the same next tokens.
    let emb = rmsnorm(&x.emb, p.get(ENORM), s.eps)?;
    for t in 1..=depth.max(1) {
        let cat = Tensor::cat(&[&emb, &rmsnorm(&hidden, p.get(HNORM), s.eps)?], 2)?;
        let mut xs = linear(&cat, p.get(EH_PROJ))?;

        // attention
        let a = rmsnorm(&xs, blk("attn_norm.weight"), s.eps)?;
        let q = linear(&a, blk("attn_q.weight"))?.reshape((b, l, h, hd))?;
        let k = linear(&a, blk("attn_k.weight"))?.reshape((b, l, hkv, hd))?;
        let v = linear(&a, blk("attn_v.weight"))?.reshape((b, l, hkv, hd))?;
        let q = rmsnorm(&q, blk("attn_q_norm.weight"), s.eps)?.transpose(1, 2)?.contiguous()?;
        let k = rmsnorm(&k, blk("attn_k_norm.weight"), s.eps)?.transpose(1, 2)?.contiguous()?;
        let q = (rope(&q, &x.cos, &x.sin)? * s.attn_scale as f64)?;
        let k = expand(rope(&k, &x.cos, &x.sin)?)?;
        let v = expand(v.transpose(1, 2)?.contiguous()?)?;
        kv.push((k, v));
        let (k1, v1) = &kv[0];
        // Scores against depth 1's rows (B, H, L, L), then one column per
        // chained depth 2..=t: the row of depth u at position j - (t - u).
        let mut cols = vec![q.matmul(&k1.t()?.contiguous()?)?.broadcast_add(&x.masks[t - 1])?];
        for (u, (ku, _)) in kv.iter().enumerate().skip(1) {
            // kv[u] is depth u + 1.
            let back = t - (u + 1);
            cols.push((&q * shift(ku, 2, back)?)?.sum_keepdim(D::Minus1)?);
        }
        let scores = Tensor::cat(&cols, D::Minus1)?;
        let max = scores.max_keepdim(D::Minus1)?.detach();
        let e = scores.broadcast_sub(&max)?.exp()?;
        let att = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let mut o = att.narrow(D::Minus1, 0, l)?.contiguous()?.matmul(v1)?;
        for (u, (_, vu)) in kv.iter().enumerate().skip(1) {
            let back = t - (u + 1);
            let w = att.narrow(D::Minus1, l + u - 1, 1)?;
            o = (o + shift(vu, 2, back)?.broadcast_mul(&w)?)?;
        }
        let o = o.transpose(1, 2)?.reshape((b, l, h * hd))?;
        let o = rmsnorm(&linear(&o, blk("attn_output.weight"))?, blk("post_attention_norm.weight"), s.eps)?;
        xs = (xs + o)?;

        // feed-forward (GELU-tanh gated)
        let f = rmsnorm(&xs, blk("ffn_norm.weight"), s.eps)?;
        let g = (linear(&f, blk("ffn_gate.weight"))?.gelu()? * linear(&f, blk("ffn_up.weight"))?)?;
        let o = rmsnorm(&linear(&g, blk("ffn_down.weight"))?, blk("post_ffw_norm.weight"), s.eps)?;
        xs = (xs + o)?;

        let y = rmsnorm(&xs, p.get(OUT_NORM), s.eps)?;
        let logits = linear(&y, out_rows)?;
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let z = logits.broadcast_sub(&max)?;
        let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
        out.push(z.broadcast_sub(&lse)?);
        // The next depth reads this depth's output one position later.
        hidden = shift(&y, 1, 1)?;
    }
    Ok(out)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Soft cross-entropy -sum p log q per row, averaged over rows with a target
/// (`targets` (B, L, N) holds the teacher's probabilities).
pub fn loss(logq: &Tensor, targets: &Tensor, n_rows: usize) -> candle_core::Result<Tensor> {
    (logq * targets)?.sum_all()?.neg()? / n_rows.max(1) as f64
}

pub fn zeros_like(t: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::zeros(t.shape(), DType::F32, t.device())
}
