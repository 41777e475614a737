//! Position-addressed KV cache.
//!
//! Row p of each layer holds the key and value of the token at position p.
//! `truncate(n)` forgets positions >= n, which is how rejected draft tokens are
//! rolled back. Every position is kept (sliding-window layers mask by distance
//! at attention time), so rolling back never loses a key that a later token in
//! the window still needs.
//!
//! Dropped caches leave their buffers to the next cache of the same shape
//! (`SPARES`): a request's cache is tens of MB, and fresh memory costs a page
//! fault and a zeroed page per 4 KB on first touch (28 MB: 11-14 ms on this
//! project's VM, against 1 ms for memory already touched). Slots past a
//! cache's length may hold stale values from a rollback or an earlier
//! request; readers never let them through (the attention kernels weigh them
//! 0, and `store` zeroes the other half of a bf16 value pair when it starts
//! one, so no stale non-finite value can meet a 0 weight).

use std::sync::Mutex;

/// Buffers of dropped caches, at most `SPARE_COUNT` and `SPARE_BYTES` in all.
static SPARES: Mutex<Vec<Spare>> = Mutex::new(Vec::new());
const SPARE_COUNT: usize = 4;
const SPARE_BYTES: usize = 1 << 30;
/// A new cache allocates up to this many bytes at once (its whole capacity
/// for a typical request), then grows by doubling, which copies.
const EAGER_BYTES: usize = 64 << 20;

/// A dropped cache's buffers and the shape they fit.
struct Spare {
    shape: (usize, usize, bool, bool),
    alloc: usize,
    bytes: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    k16: Vec<Vec<u16>>,
    v16: Vec<Vec<u16>>,
}

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
        KvCache::with_values(n_layers, kv_dim, head_dim, capacity, true)
    }

    /// A cache of keys only (see `values`).
    pub fn keys_only(n_layers: usize, kv_dim: usize, head_dim: usize, capacity: usize) -> KvCache {
        KvCache::with_values(n_layers, kv_dim, head_dim, capacity, false)
    }

    fn with_values(n_layers: usize, kv_dim: usize, head_dim: usize, capacity: usize, values: bool) -> KvCache {
        let bf16 = specdec_kernels::attn_math() == specdec_kernels::AttnMath::Bf16 && head_dim.is_multiple_of(32);
        let shape = (n_layers, kv_dim, bf16, values);
        let spare = {
            let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
            // The largest spare of this shape.
            let best = (0..spares.len()).filter(|&i| spares[i].shape == shape).max_by_key(|&i| spares[i].alloc);
            best.map(|i| spares.swap_remove(i))
        };
        fn empty<T>(n: usize) -> Vec<Vec<T>> {
            (0..n).map(|_| Vec::new()).collect()
        }
        match spare {
            Some(s) => KvCache {
                n_layers,
                kv_dim,
                capacity,
                len: 0,
                alloc: s.alloc,
                values,
                k: s.k,
                v: s.v,
                k16: s.k16,
                v16: s.v16,
                bf16,
            },
            None => KvCache {
                n_layers,
                kv_dim,
                capacity,
                len: 0,
                alloc: 0,
                values,
                k: empty(n_layers),
                v: empty(n_layers),
                k16: empty(n_layers),
                v16: empty(n_layers),
                bf16,
            },
        }
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
        let eager = EAGER_BYTES / self.bytes_per_token().max(1);
        let pos = new_len.max(self.alloc * 2).max(eager).min(self.capacity).max(new_len);
        let d = self.kv_dim;
        // A first allocation comes zeroed from the allocator (untouched pages
        // are not written twice); growing copies and zeroes the new part.
        fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
            if v.is_empty() {
                *v = vec![T::default(); n];
            } else if v.len() < n {
                v.resize(n, T::default());
            }
        }
        for l in 0..self.n_layers {
            if self.bf16 {
                grow(&mut self.k16[l], pos * d);
                // Whole pairs: a pair's odd slot exists before its key does.
                grow(&mut self.v16[l], pos.next_multiple_of(2) * d);
            } else {
                grow(&mut self.k[l], pos * d);
                if self.values {
                    grow(&mut self.v[l], pos * d);
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
            if pos.is_multiple_of(2) {
                // Starting a pair: its odd half is not a key yet; zero it (it
                // may hold a stale value, even from an earlier request).
                for (x, &val) in v.iter().enumerate() {
                    pair[2 * x] = bits(val);
                    pair[2 * x + 1] = 0;
                }
            } else {
                for (x, &val) in v.iter().enumerate() {
                    pair[2 * x + 1] = bits(val);
                }
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

    /// Bytes of cache per position (all layers, K and V) as stored.
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

impl Drop for KvCache {
    /// Leaves the buffers to the next cache of this shape, within bounds.
    fn drop(&mut self) {
        if self.alloc == 0 {
            return;
        }
        let bytes = self.alloc * self.bytes_per_token();
        let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = spares.iter().map(|s| s.bytes).sum();
        if spares.len() >= SPARE_COUNT || held + bytes > SPARE_BYTES {
            return;
        }
        spares.push(Spare {
            shape: (self.n_layers, self.kv_dim, self.bf16, self.values),
            alloc: self.alloc,
            bytes,
            k: std::mem::take(&mut self.k),
            v: std::mem::take(&mut self.v),
            k16: std::mem::take(&mut self.k16),
            v16: std::mem::take(&mut self.v16),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_cache_is_reused_and_a_new_pair_zeroes_its_stale_half() {
        // A shape no other test uses, so the spare is this test's own.
        let (layers, d, hd) = (3, 96, 32);
        let mut c = KvCache::new(layers, d, hd, 10);
        c.reserve(4);
        for p in 0..4 {
            for l in 0..layers {
                c.store(l, p, &vec![1.5; d], &vec![-2.5; d]);
            }
        }
        c.set_len(4);
        let alloc = c.alloc;
        drop(c);
        let mut c = KvCache::new(layers, d, hd, 10);
        assert_eq!(c.alloc, alloc, "the dropped cache's buffers were not reused");
        assert!(c.is_empty());
        c.reserve(1);
        for l in 0..layers {
            c.store(l, 0, &vec![0.75; d], &vec![3.0; d]);
        }
        c.set_len(1);
        let (k, v) = c.layer(1);
        assert!(k.iter().all(|&x| x == 0.75) && v.iter().all(|&x| x == 3.0));
        if c.has_bf16() {
            // Position 1 (the pair's odd half) held -2.5 from the old cache.
            let (_, v16) = c.layer_bf16(2);
            assert!((0..d).all(|x| v16[2 * x + 1] == 0), "a stale odd half survived a new pair");
            assert!((0..d).all(|x| v16[2 * x] != 0));
        }
    }
}
