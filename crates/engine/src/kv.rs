//! Position-addressed KV cache.
//!
//! Row p of each layer holds the key and value of the token at position p.
//! `truncate(n)` forgets positions >= n, which is how rejected draft tokens are
//! rolled back. Every position is kept (sliding-window layers mask by distance
//! at attention time), so rolling back never loses a key that a later token in
//! the window still needs.

pub struct KvCache {
    pub n_layers: usize,
    /// Floats per position per layer (kv heads x head size).
    pub kv_dim: usize,
    pub capacity: usize,
    len: usize,
    /// False when values live inside the keys (absorbed MLA caches the
    /// latent once: keys are [latent; rope key], values are the latent).
    pub values: bool,
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    /// With `AttnMath::Bf16` (chosen when the cache is made): the keys and
    /// values again in bf16, as the attention kernels read them. Keys row
    /// by row like `k`; values in pairs of positions (2m, 2m+1) interleaved
    /// element by element (`v16[m * 2 * kv_dim + 2 * x + p % 2]`), so one
    /// 64-byte load holds 16 elements of both keys of a pair. Pairs are by
    /// absolute position, never by pass, which keeps rows batch-invariant.
    /// Empty when attention runs in f32.
    pub(crate) k16: Vec<Vec<u16>>,
    pub(crate) v16: Vec<Vec<u16>>,
    bf16: bool,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            n_layers,
            kv_dim,
            capacity,
            len: 0,
            values: true,
            k: (0..n_layers).map(|_| Vec::new()).collect(),
            v: (0..n_layers).map(|_| Vec::new()).collect(),
            k16: (0..n_layers).map(|_| Vec::new()).collect(),
            v16: (0..n_layers).map(|_| Vec::new()).collect(),
            bf16: specdec_kernels::attn_math() == specdec_kernels::AttnMath::Bf16,
        }
    }

    /// A cache of keys only (see `values`).
    pub fn keys_only(n_layers: usize, kv_dim: usize, capacity: usize) -> KvCache {
        KvCache { values: false, ..KvCache::new(n_layers, kv_dim, capacity) }
    }

    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rolls back to the first `n` positions.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Makes room for positions up to `new_len` (grows lazily, so a large
    /// context costs memory only when used).
    pub(crate) fn reserve(&mut self, new_len: usize) {
        let need = new_len * self.kv_dim;
        for l in 0..self.n_layers {
            if self.k[l].len() < need {
                let target = need.max(self.k[l].len() * 2).min(self.capacity * self.kv_dim);
                self.k[l].resize(target, 0.0);
                if self.values {
                    self.v[l].resize(target, 0.0);
                }
                if self.bf16 {
                    self.k16[l].resize(target, 0);
                    // Whole pairs: a pair's odd slot exists before its key does.
                    self.v16[l].resize((target / self.kv_dim).next_multiple_of(2) * self.kv_dim, 0);
                }
            }
        }
    }

    /// Whether the cache also holds its keys and values in bf16 (`k16`).
    pub fn has_bf16(&self) -> bool {
        self.bf16
    }

    /// Writes the key and value (`kv_dim` each; a keys-only cache ignores
    /// `v` and pairs its keys as values) of one position of one layer.
    pub(crate) fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let d = self.kv_dim;
        self.k[layer][pos * d..(pos + 1) * d].copy_from_slice(k);
        if self.values {
            self.v[layer][pos * d..(pos + 1) * d].copy_from_slice(v);
        }
        if self.bf16 {
            let bits = specdec_kernels::matmul::scalar::bf16_bits;
            for (dst, &x) in self.k16[layer][pos * d..(pos + 1) * d].iter_mut().zip(k) {
                *dst = bits(x);
            }
            let v = if self.values { v } else { k };
            let pair = &mut self.v16[layer][(pos / 2) * 2 * d..(pos / 2 + 1) * 2 * d];
            for (x, &val) in v.iter().enumerate() {
                pair[2 * x + pos % 2] = bits(val);
            }
        }
    }

    /// The bf16 keys and pair-interleaved values of one layer (see `k16`),
    /// over the whole allocation (held positions and beyond).
    pub fn layer_bf16(&self, layer: usize) -> (&[u16], &[u16]) {
        (&self.k16[layer], &self.v16[layer])
    }

    /// Keys and values of the held positions of one layer (for a keys-only
    /// cache, the keys twice).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        let n = self.len * self.kv_dim;
        let v = if self.values { &self.v[layer][..n] } else { &self.k[layer][..n] };
        (&self.k[layer][..n], v)
    }

    pub(crate) fn set_len(&mut self, n: usize) {
        self.len = n;
    }

    /// Bytes of cache per position (all layers, K and V).
    pub fn bytes_per_token(&self) -> usize {
        self.n_layers * self.kv_dim * (if self.values { 2 } else { 1 } * 4 + if self.bf16 { 4 } else { 0 })
    }
}
