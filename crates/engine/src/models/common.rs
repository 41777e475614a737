//! Pieces every decoder-only architecture shares: laying out the rows of a
//! batched pass, causal attention over each row's own cache, and picking the
//! rows that need logits. Each works row by row, so a row's numbers never
//! depend on how many rows or sequences share the pass.

use specdec_gguf::{GgufFile, TensorInfo};
use specdec_kernels::pool::SendPtr;
use specdec_kernels::quant::dequantize_row;
use specdec_kernels::{
    attend_rows, attend_rows_bf16, matmul, matmul_alloc, matmul_argmax, ActScratch, Isa, MatmulJob, PackedMatrix, Pool,
    RowPost,
};

use crate::{BatchItem, EngineError, KvCache, LogitRows, Model};

/// The token embedding table `token_embd.weight`: ggml dims [n_embd, n_vocab]
/// with 1 ..= 2^24 rows.
pub fn embedding_table(file: &GgufFile, n_embd: usize) -> Result<TensorInfo, EngineError> {
    let embd = file
        .header
        .tensor("token_embd.weight")
        .ok_or_else(|| EngineError::MissingTensor("token_embd.weight".into()))?
        .clone();
    if embd.dims.len() != 2 || embd.dims[0] != n_embd as u64 || embd.dims[1] == 0 || embd.dims[1] > 1 << 24 {
        return Err(EngineError::TensorShape {
            name: "token_embd.weight".into(),
            want: vec![n_embd as u64, 0],
            found: embd.dims.clone(),
        });
    }
    Ok(embd)
}

/// Embedding rows of `ids` (checked against the vocabulary), read from the
/// mapping row by row.
pub fn embed(file: &GgufFile, embd: &TensorInfo, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
    let (d, n_vocab) = (embd.dims[0] as usize, embd.dims[1] as usize);
    let row_bytes = (embd.n_bytes / embd.dims[1]) as usize;
    let data = file.tensor_data(embd);
    let mut x = vec![0f32; ids.len() * d];
    for (i, &t) in ids.iter().enumerate() {
        if t as usize >= n_vocab {
            return Err(EngineError::TokenOutOfRange { id: t, vocab: n_vocab });
        }
        let t = t as usize;
        dequantize_row(embd.ty, &data[t * row_bytes..(t + 1) * row_bytes], &mut x[i * d..(i + 1) * d])
            .map_err(|e| EngineError::Tensor("token_embd.weight".into(), e.to_string()))?;
    }
    Ok(x)
}

/// The input rows of an MTP module, [enorm(e_j); hnorm(h_j)] (embedding
/// first, 2d wide), from the next tokens' embedding rows `e` and the target's
/// post-norm hidden states, `d = enorm.len()` floats per row each.
pub fn mtp_input(e: &[f32], hidden: &[f32], enorm: &[f32], hnorm: &[f32], eps: f32) -> Result<Vec<f32>, EngineError> {
    let d = enorm.len();
    if hidden.len() != e.len() {
        return Err(EngineError::Tensor(
            "mtp input".into(),
            format!("{} hidden floats for {} tokens", hidden.len(), e.len() / d.max(1)),
        ));
    }
    let mut cat = vec![0f32; 2 * e.len()];
    for ((row, e), h) in cat.chunks_exact_mut(2 * d).zip(e.chunks_exact(d)).zip(hidden.chunks_exact(d)) {
        let (a, b) = row.split_at_mut(d);
        a.copy_from_slice(e);
        specdec_kernels::ops::rmsnorm(a, enorm, eps);
        b.copy_from_slice(h);
        specdec_kernels::ops::rmsnorm(b, hnorm, eps);
    }
    Ok(cat)
}

/// The rows of a batched pass, sequence after sequence: row r is token
/// `ids[r]` of sequence `seq[r]` at position `pos[r]`.
pub struct Rows {
    pub seq: Vec<usize>,
    pub pos: Vec<usize>,
    pub ids: Vec<u32>,
}

impl Rows {
    pub fn of(items: &[BatchItem]) -> Rows {
        let (mut seq, mut pos, mut ids) = (vec![], vec![], vec![]);
        for (s, it) in items.iter().enumerate() {
            let pos0 = it.cache.len();
            for (j, &t) in it.tokens.iter().enumerate() {
                seq.push(s);
                pos.push(pos0 + j);
                ids.push(t);
            }
        }
        Rows { seq, pos, ids }
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// The rows `keep` of these rows.
    pub fn subset(&self, keep: &[usize]) -> Rows {
        Rows {
            seq: keep.iter().map(|&r| self.seq[r]).collect(),
            pos: keep.iter().map(|&r| self.pos[r]).collect(),
            ids: keep.iter().map(|&r| self.ids[r]).collect(),
        }
    }
}

/// One sequence through a model's batched pass (`Model::forward` of every
/// architecture).
pub fn forward_one<M: Model + ?Sized>(
    model: &M,
    cache: &mut KvCache,
    tokens: &[u32],
    rows: LogitRows,
) -> Result<Vec<f32>, EngineError> {
    let mut items = [BatchItem { cache, tokens, rows }];
    Ok(model.forward_batch(&mut items)?.pop().unwrap_or_default())
}

/// Buffers a pass takes over from the one before it: a long prompt's
/// activations are tens of MB, and fresh allocations of that size cost a
/// page fault and a zeroed page per 4 KB on every pass (~5 % of a prefill).
#[derive(Default)]
pub struct Scratch {
    bufs: Vec<Vec<f32>>,
    pub qa: ActScratch,
}

impl Scratch {
    /// A buffer of `n` floats (a recycled one where there is one): what an
    /// earlier pass left there, zeros past it. Every use writes each element
    /// it reads first (matmul outputs, copies, attention outputs).
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        let mut v = self.bufs.pop().unwrap_or_default();
        v.truncate(n);
        v.resize(n, 0.0);
        v
    }

    /// Hands buffers back, in the reverse order of `take`, so the next pass
    /// gets each buffer back for the same use.
    pub fn give(&mut self, bufs: impl IntoIterator<Item = Vec<f32>>) {
        self.bufs.extend(bufs);
    }
}

/// A model's spare `Scratch`: a pass takes it (or, when another pass holds
/// it, starts an empty one) and puts it back at its end.
#[derive(Default)]
pub struct ScratchCell(std::sync::Mutex<Option<Scratch>>);

impl ScratchCell {
    pub fn get(&self) -> Scratch {
        self.0.lock().ok().and_then(|mut s| s.take()).unwrap_or_default()
    }
    pub fn put(&self, s: Scratch) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(s);
        }
    }
}

/// Attention geometry of one layer.
#[derive(Clone, Copy)]
pub struct AttnShape {
    pub head_dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Sliding window (keys at distance >= window are masked), or None.
    pub window: Option<usize>,
}

/// Causal attention of every query row over its own sequence's cache.
/// `q` holds each row's (already scaled and rotated) query heads, `caches[s]`
/// sequence s's keys and values of this layer; `out` receives each row's
/// attention output, `n_head x head_dim` per row.
pub fn attention(pool: &Pool, isa: Isa, shape: AttnShape, caches: &[LayerKv], rows: &Rows, q: &[f32], out: &mut [f32]) {
    let (hd, nh) = (shape.head_dim, shape.n_head);
    let m = rows.len();
    let group = nh / shape.n_head_kv;
    let kv_dim = shape.n_head_kv * hd;
    let out_ptr = SendPtr(out.as_mut_ptr());
    let nt = pool.threads();
    // Heads of a key/value group go through one pass (each key and value row
    // read once for all of them), and so do up to ROWS consecutive rows of one
    // sequence (a long prompt's keys and values come from memory once per
    // block of rows). Short passes split groups and blocks until every thread
    // has one task, no further: each task reads its sequence's whole cache, so
    // a decode step at a long context is bound by how often the cache is read.
    // Per-head arithmetic is the same either way.
    const ROWS: usize = 16;
    let mut gs = group;
    while gs.is_multiple_of(2) && m * nh / gs < nt {
        gs /= 2;
    }
    let per_row = nh / gs;
    let mut rb = ROWS;
    while rb > 1 && m.div_ceil(rb) * per_row < nt {
        rb /= 2;
    }
    // Blocks of even height: 12 rows go as 6 + 6, not 8 + 4, which left one
    // thread attending twice the rows of the other (9-11-row verify passes
    // 3-5 % faster at a 900-token context; prompts keep blocks of 16).
    rb = m.div_ceil(m.div_ceil(rb).max(1)).max(1);
    // Blocks of consecutive rows of one sequence: (first row, rows).
    let mut blocks: Vec<(usize, usize)> = Vec::with_capacity(m.div_ceil(rb));
    for i in 0..m {
        match blocks.last_mut() {
            Some((i0, n)) if *n < rb && rows.seq[*i0] == rows.seq[i] && rows.pos[*i0] + *n == rows.pos[i] => *n += 1,
            _ => blocks.push((i, 1)),
        }
    }
    let tasks = blocks.len() * per_row;
    // The caches' attention arithmetic (bf16 products where the CPU has
    // them: `AttnMath`), fixed when they were made, so the same for every
    // pass and rows stay batch-invariant.
    let bf16 = caches.first().is_some_and(|c| c.bf16);
    assert!(
        caches.iter().all(|c| c.bf16 == bf16) && (!bf16 || hd.is_multiple_of(32)),
        "the caches of one pass must share one attention arithmetic that suits the head size"
    );
    thread_local! {
        /// Each thread's attention scratch, kept across layers and passes (a
        /// long prompt's scores are a few hundred KB per task).
        static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    pool.run(&|t| {
        let mut scores = SCORES.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let mut acc = vec![0f32; rb * gs * hd];
        let mut ranges = Vec::with_capacity(rb);
        // Strided, not blocked: later rows attend to more positions, so
        // interleaving balances the threads.
        for task in (t..tasks).step_by(nt) {
            let ((i0, n), h0) = (blocks[task / per_row], (task % per_row) * gs);
            let c = &caches[rows.seq[i0]];
            ranges.clear();
            ranges.extend(
                rows.pos[i0..i0 + n].iter().map(|&pos| (shape.window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos)),
            );
            let qh = &q[i0 * nh * hd + h0 * hd..];
            let kvh = (h0 / group) * hd;
            if bf16 {
                // Values interleave pairs of positions: head offsets double.
                let (kh, vh) = (&c.k16[kvh..], &c.v16[2 * kvh..]);
                attend_rows_bf16(isa, gs, hd, qh, nh * hd, kh, vh, kv_dim, &ranges, &mut scores, &mut acc, gs * hd);
            } else {
                let (kh, vh) = (&c.k[kvh..], &c.v[kvh..]);
                attend_rows(isa, gs, hd, qh, nh * hd, kh, vh, kv_dim, &ranges, &mut scores, &mut acc, gs * hd);
            }
            for i in 0..n {
                // SAFETY: each (row, heads) slice is written by exactly one task.
                unsafe {
                    let dst = out_ptr.get().add((i0 + i) * nh * hd + h0 * hd);
                    std::ptr::copy_nonoverlapping(acc.as_ptr().add(i * gs * hd), dst, gs * hd)
                };
            }
        }
        SCORES.with(|s| *s.borrow_mut() = scores);
    });
}

/// Marks every sequence's rows as appended to its cache and gathers the
/// hidden states (`d` wide) of the rows that need logits: all of a sequence's
/// rows, or its last. Returns those rows and how many each sequence has.
pub fn finish_rows(items: &mut [BatchItem], x: &[f32], d: usize) -> (Vec<f32>, Vec<usize>) {
    let mut xs = Vec::new();
    let mut r0 = 0;
    for it in items.iter() {
        let n = it.tokens.len();
        let first = first_logit_row(it);
        xs.extend_from_slice(&x[(r0 + first) * d..(r0 + n) * d]);
        r0 += n;
    }
    (xs, mark_appended(items))
}

/// Marks every sequence's rows as appended to its cache; returns how many
/// logit rows each sequence has.
pub fn mark_appended(items: &mut [BatchItem]) -> Vec<usize> {
    items
        .iter_mut()
        .map(|it| {
            let n = it.tokens.len();
            let len = it.cache.len() + n;
            it.cache.set_len(len);
            n - first_logit_row(it)
        })
        .collect()
}

/// The first of an item's rows that needs logits (`tokens.len()` if none).
fn first_logit_row(it: &BatchItem) -> usize {
    let n = it.tokens.len();
    match it.rows {
        LogitRows::All => 0,
        LogitRows::Last => n.saturating_sub(1),
        LogitRows::None => n,
    }
}

/// The rows of a pass (indices into `Rows`) whose logits `finish_rows`
/// gathers, in the same order, or None when that is every row. Only these
/// rows' last-layer outputs are read when no one asks for hidden states, so
/// the last layer runs its queries, attention and feed-forward for them
/// alone (as llama.cpp does); every row still writes its keys and values.
pub fn logit_rows(items: &[BatchItem]) -> Option<Vec<usize>> {
    let mut keep = Vec::new();
    let mut r0 = 0;
    for it in items {
        let n = it.tokens.len();
        keep.extend(r0 + first_logit_row(it)..r0 + n);
        r0 += n;
    }
    (keep.len() < r0).then_some(keep)
}

/// Rows `keep` of a row-major matrix `x` of `w` columns.
pub fn pick_rows(x: &[f32], keep: &[usize], w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(keep.len() * w);
    for &r in keep {
        out.extend_from_slice(&x[r * w..(r + 1) * w]);
    }
    out
}

/// The query, key and value projections of a layer's normed input `h` (m
/// rows of `w.0.k`): keys and values for every row, queries for the rows
/// `sub` only when given (the last layer's logit rows, see `logit_rows`),
/// packed at the front of `q`. Returns how many query rows were made.
#[allow(clippy::too_many_arguments)]
pub fn project_qkv(
    pool: &Pool,
    isa: Isa,
    h: &[f32],
    m: usize,
    qa: &mut ActScratch,
    (wq, wk, wv): (&PackedMatrix, &PackedMatrix, &PackedMatrix),
    (q, k, v): (&mut [f32], &mut [f32], &mut [f32]),
    sub: Option<&[usize]>,
) -> usize {
    match sub {
        None => {
            let jobs = &mut [MatmulJob { w: wq, out: q }, MatmulJob { w: wk, out: k }, MatmulJob { w: wv, out: v }];
            matmul(pool, isa, h, m, qa, jobs);
            m
        }
        Some(r) => {
            matmul(pool, isa, h, m, qa, &mut [MatmulJob { w: wk, out: k }, MatmulJob { w: wv, out: v }]);
            if !r.is_empty() {
                let hq = pick_rows(h, r, wq.k);
                matmul(pool, isa, &hq, r.len(), qa, &mut [MatmulJob { w: wq, out: &mut q[..r.len() * wq.n] }]);
            }
            r.len()
        }
    }
}

/// Splits one pass's hidden states (`d` per row, every row) per sequence.
pub fn split_hidden(hidden: &[f32], items: &[BatchItem], d: usize) -> Vec<Vec<f32>> {
    let mut at = 0;
    items
        .iter()
        .map(|it| {
            let h = hidden[at..at + it.tokens.len() * d].to_vec();
            at += it.tokens.len() * d;
            h
        })
        .collect()
}

/// What a pass ends in: every logit row, or only each row's argmax
/// (`Model::forward_argmax`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    Logits,
    Argmax,
}

/// `Head`'s output, per sequence.
pub enum HeadOut {
    Logits(Vec<Vec<f32>>),
    Argmax(Vec<Vec<u32>>),
}

impl Head {
    /// The output of a pass with no rows.
    pub fn empty(self, n_seqs: usize) -> HeadOut {
        match self {
            Head::Logits => HeadOut::Logits(vec![Vec::new(); n_seqs]),
            Head::Argmax => HeadOut::Argmax(vec![Vec::new(); n_seqs]),
        }
    }
}

impl HeadOut {
    pub fn logits(self) -> Vec<Vec<f32>> {
        match self {
            HeadOut::Logits(l) => l,
            HeadOut::Argmax(_) => unreachable!("the pass was asked for logits"),
        }
    }
    pub fn argmax(self) -> Vec<Vec<u32>> {
        match self {
            HeadOut::Argmax(ids) => ids,
            HeadOut::Logits(_) => unreachable!("the pass was asked for argmaxes"),
        }
    }
}

/// A pass's output from its final normed rows `xs` (`per_seq` rows per
/// sequence) through the output matrix `w`: logits (soft-capped as
/// `tanh(l / cap) * cap` where the model caps them), or only their argmaxes
/// (`matmul_argmax`: the same values, never stored).
#[allow(clippy::too_many_arguments)]
pub fn output_rows(
    pool: &Pool,
    isa: Isa,
    head: Head,
    xs: &[f32],
    per_seq: &[usize],
    qa: &mut ActScratch,
    w: &PackedMatrix,
    cap: Option<f32>,
) -> HeadOut {
    let m: usize = per_seq.iter().sum();
    let soft_cap = cap.map(|cap| move |l: &mut [f32]| l.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap));
    match head {
        Head::Logits => {
            let mut logits = matmul_alloc(pool, isa, xs, m, qa, w);
            if let Some(f) = &soft_cap {
                f(&mut logits);
            }
            HeadOut::Logits(split_logits(logits, per_seq, w.n))
        }
        Head::Argmax => {
            let post = soft_cap.as_ref().map(|f| f as RowPost);
            HeadOut::Argmax(split_logits(matmul_argmax(pool, isa, xs, m, qa, w, post), per_seq, 1))
        }
    }
}

/// Splits one pass's logits (`n_vocab` per row; or one argmax id per row,
/// `n_vocab` 1) per sequence.
pub fn split_logits<T: Clone>(logits: Vec<T>, per_seq: &[usize], n_vocab: usize) -> Vec<Vec<T>> {
    if per_seq.len() == 1 {
        return vec![logits];
    }
    let mut out = Vec::with_capacity(per_seq.len());
    let mut at = 0;
    for &nr in per_seq {
        out.push(logits[at * n_vocab..(at + nr) * n_vocab].to_vec());
        at += nr;
    }
    out
}

/// Writes row `i`'s key and value (`kv_dim` each) into its sequence's cache
/// at its position.
pub fn store_kv(items: &mut [BatchItem], rows: &Rows, layer: usize, i: usize, k: &[f32], v: &[f32]) {
    items[rows.seq[i]].cache.store(layer, rows.pos[i], k, v);
}

/// One sequence's keys and values of one layer: f32 (`k`, `v`) or, in a
/// bf16 cache (`KvCache::k16`), bf16 (`k16`, `v16`); the other pair is empty.
pub struct LayerKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub k16: &'a [u16],
    pub v16: &'a [u16],
    pub bf16: bool,
}

/// Each sequence's keys and values of one layer.
pub fn layer_caches<'a>(items: &'a [BatchItem], layer: usize) -> Vec<LayerKv<'a>> {
    items
        .iter()
        .map(|it| {
            let k = it.cache.k[layer].as_slice();
            let (k16, v16) = it.cache.layer_bf16(layer);
            let v = if it.cache.values { it.cache.v[layer].as_slice() } else { k };
            LayerKv { k, v, k16, v16, bf16: it.cache.has_bf16() }
        })
        .collect()
}

/// Makes room in every sequence's cache for its new rows.
pub fn reserve(items: &mut [BatchItem]) {
    for it in items.iter_mut() {
        let n = it.cache.len() + it.tokens.len();
        it.cache.reserve(n);
    }
}
