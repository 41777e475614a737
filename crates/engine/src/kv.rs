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
            }
        }
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
        self.n_layers * self.kv_dim * if self.values { 2 } else { 1 } * 4
    }
}
