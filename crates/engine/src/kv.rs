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
    /// Positions allocated so far (grows lazily, up to `capacity`).
    alloc: usize,
    /// False when values live inside the keys (absorbed MLA caches the
    /// latent once: keys are [latent; rope key], values are the latent).
    pub values: bool,
    /// f32 keys and values, row p at `p * kv_dim` (empty with bf16).
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    /// With `AttnMath::Bf16` (chosen when the cache is made) the cache holds
    /// bf16 instead, as the attention kernels read it, at half the bytes:
    /// keys row by row; values in pairs of positions (2m, 2m+1) interleaved
    /// element by element (`v16[m * 2 * kv_dim + 2 * x + p % 2]`), so one
    /// 64-byte load holds 16 elements of both keys of a pair. Pairs are by
    /// absolute position, never by pass, which keeps rows batch-invariant.
    /// A keys-only cache pairs its keys as values. Empty with f32.
    pub(crate) k16: Vec<Vec<u16>>,
    pub(crate) v16: Vec<Vec<u16>>,
    bf16: bool,
}

impl KvCache {
    /// A cache for `n_layers` of `kv_dim` floats per position (key/value
    /// heads of `head_dim`): bf16 when the process's attention runs in bf16
    /// and the head size suits its kernels (a multiple of 32), else f32.
    pub fn new(n_layers: usize, kv_dim: usize, head_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            n_layers,
            kv_dim,
            capacity,
            len: 0,
            alloc: 0,
            values: true,
            k: (0..n_layers).map(|_| Vec::new()).collect(),
            v: (0..n_layers).map(|_| Vec::new()).collect(),
            k16: (0..n_layers).map(|_| Vec::new()).collect(),
            v16: (0..n_layers).map(|_| Vec::new()).collect(),
            bf16: specdec_kernels::attn_math() == specdec_kernels::AttnMath::Bf16 && head_dim.is_multiple_of(32),
        }
    }

    /// A cache of keys only (see `values`).
    pub fn keys_only(n_layers: usize, kv_dim: usize, head_dim: usize, capacity: usize) -> KvCache {
        KvCache { values: false, ..KvCache::new(n_layers, kv_dim, head_dim, capacity) }
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
        if self.alloc >= new_len {
            return;
        }
        let pos = new_len.max(self.alloc * 2).min(self.capacity).max(new_len);
        let d = self.kv_dim;
        for l in 0..self.n_layers {
            if self.bf16 {
                self.k16[l].resize(pos * d, 0);
                // Whole pairs: a pair's odd slot exists before its key does.
                self.v16[l].resize(pos.next_multiple_of(2) * d, 0);
            } else {
                self.k[l].resize(pos * d, 0.0);
                if self.values {
                    self.v[l].resize(pos * d, 0.0);
                }
            }
        }
        self.alloc = pos;
    }

    /// Whether the cache holds bf16 (`k16`) rather than f32.
    pub fn has_bf16(&self) -> bool {
        self.bf16
    }

    /// Writes the key and value (`kv_dim` each; a keys-only cache ignores
    /// `v`) of one position of one layer.
    pub(crate) fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let d = self.kv_dim;
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
        } else {
            self.k[layer][pos * d..(pos + 1) * d].copy_from_slice(k);
            if self.values {
                self.v[layer][pos * d..(pos + 1) * d].copy_from_slice(v);
            }
        }
    }

    /// The bf16 keys and pair-interleaved values of one layer (see `k16`),
    /// over the whole allocation (held positions and beyond; empty with f32).
    pub fn layer_bf16(&self, layer: usize) -> (&[u16], &[u16]) {
        (&self.k16[layer], &self.v16[layer])
    }

    /// Keys and values of the held positions of one layer, row by row, as
    /// f32 whichever the storage (bf16 values are exact in f32; for a
    /// keys-only cache, the keys twice). For tests and diagnostics.
    pub fn layer(&self, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let (n, d) = (self.len * self.kv_dim, self.kv_dim);
        if !self.bf16 {
            let v = if self.values { &self.v[layer][..n] } else { &self.k[layer][..n] };
            return (self.k[layer][..n].to_vec(), v.to_vec());
        }
        let f = specdec_kernels::matmul::scalar::bf16_f32;
        let k: Vec<f32> = self.k16[layer][..n].iter().map(|&b| f(b)).collect();
        let v = (0..n).map(|i| f(self.v16[layer][(i / d / 2) * 2 * d + 2 * (i % d) + (i / d) % 2])).collect();
        (k, v)
    }

    pub(crate) fn set_len(&mut self, n: usize) {
        self.len = n;
    }

    /// Bytes of cache per position (all layers, K and V).
    pub fn bytes_per_token(&self) -> usize {
        self.n_layers
            * self.kv_dim
            * if self.bf16 {
                4
            } else if self.values {
                8
            } else {
                4
            }
    }
}
