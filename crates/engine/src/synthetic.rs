//! Random-weight models with real shapes and llama.cpp's Q4_K_M type mix, for
//! `specdec profile --synthetic NAME`: speed on shapes this machine cannot hold
//! the real weights of (the numbers are random; the bytes moved are real).

use specdec_gguf::{Array, GgmlType, GgufWriter, Value};

/// Shapes of one model.
pub struct Preset {
    pub name: &'static str,
    pub arch: &'static str,
    pub n_embd: u32,
    pub n_layers: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_vocab: u32,
    pub rope_base: f32,
    pub qkv_bias: bool,
    pub tied: bool,
}

/// The DeepSeek-R1 distills (shapes from their config.json files).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "r1-distill-qwen-1.5b",
        arch: "qwen2",
        n_embd: 1536,
        n_layers: 28,
        n_ff: 8960,
        n_head: 12,
        n_head_kv: 2,
        n_vocab: 151_936,
        rope_base: 10_000.0,
        qkv_bias: true,
        tied: false,
    },
    Preset {
        name: "r1-distill-qwen-7b",
        arch: "qwen2",
        n_embd: 3584,
        n_layers: 28,
        n_ff: 18_944,
        n_head: 28,
        n_head_kv: 4,
        n_vocab: 152_064,
        rope_base: 10_000.0,
        qkv_bias: true,
        tied: false,
    },
    Preset {
        name: "r1-distill-llama-8b",
        arch: "llama",
        n_embd: 4096,
        n_layers: 32,
        n_ff: 14_336,
        n_head: 32,
        n_head_kv: 8,
        n_vocab: 128_256,
        rope_base: 500_000.0,
        qkv_bias: false,
        tied: false,
    },
];

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Random blocks of a K-quant type with small, finite scales.
fn quant_bytes(ty: GgmlType, n_elements: u64, rng: &mut Rng) -> Vec<u8> {
    let (blck, bsize) = ty.block_geometry();
    let mut v = vec![0u8; (n_elements / blck * bsize) as usize];
    rng.fill(&mut v);
    let d = half::f16::from_f32(0.002).to_bits().to_le_bytes();
    for b in v.chunks_exact_mut(bsize as usize) {
        match ty {
            // d, dmin first
            GgmlType::Q4_K => {
                b[..2].copy_from_slice(&d);
                b[2..4].copy_from_slice(&d);
            }
            // d last
            GgmlType::Q6_K => {
                let n = b.len();
                b[n - 2..].copy_from_slice(&d);
            }
            _ => unreachable!("synthetic weights are Q4_K or Q6_K"),
        }
    }
    v
}

/// llama.cpp's `use_more_bits`: which layers Q4_K_M keeps at Q6_K for
/// attn_v and ffn_down.
fn more_bits(i: u32, n: u32) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// GGUF bytes of a random-weight model with `p`'s shapes and Q4_K_M's types
/// (f32 norms and biases). `progress(done, total)` is called per layer.
pub fn build(p: &Preset, progress: &dyn Fn(usize, usize)) -> Vec<u8> {
    let a = p.arch;
    let hd = p.n_embd / p.n_head;
    let (d, q_dim, kv_dim, ff) = (p.n_embd as u64, (p.n_head * hd) as u64, (p.n_head_kv * hd) as u64, p.n_ff as u64);
    let mut rng = Rng(0x5EED_1234_5678_9ABC);
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String(a.into()));
    w.kv("general.name", Value::String(format!("synthetic {}", p.name)));
    w.kv(&format!("{a}.context_length"), Value::U32(32_768));
    w.kv(&format!("{a}.embedding_length"), Value::U32(p.n_embd));
    w.kv(&format!("{a}.block_count"), Value::U32(p.n_layers));
    w.kv(&format!("{a}.feed_forward_length"), Value::U32(p.n_ff));
    w.kv(&format!("{a}.attention.head_count"), Value::U32(p.n_head));
    w.kv(&format!("{a}.attention.head_count_kv"), Value::U32(p.n_head_kv));
    w.kv(&format!("{a}.rope.freq_base"), Value::F32(p.rope_base));
    w.kv(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
    // A placeholder vocabulary: profile feeds token ids, never text.
    let tokens: Vec<String> = (0..p.n_vocab).map(|i| format!("<t{i}>")).collect();
    w.kv("tokenizer.ggml.model", Value::String("llama".into()));
    w.kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    w.kv("tokenizer.ggml.add_bos_token", Value::Bool(false));
    let f32s = |n: u64, base: f32, rng: &mut Rng| -> Vec<u8> {
        (0..n).flat_map(|_| (base + (rng.next() % 1000) as f32 * 1e-4).to_le_bytes()).collect()
    };
    let nv = p.n_vocab as u64;
    w.tensor("token_embd.weight", &[d, nv], GgmlType::Q4_K, quant_bytes(GgmlType::Q4_K, d * nv, &mut rng));
    w.tensor("output_norm.weight", &[d], GgmlType::F32, f32s(d, 1.0, &mut rng));
    if !p.tied {
        w.tensor("output.weight", &[d, nv], GgmlType::Q6_K, quant_bytes(GgmlType::Q6_K, d * nv, &mut rng));
    }
    for i in 0..p.n_layers {
        progress(i as usize, p.n_layers as usize);
        let n = |s: &str| format!("blk.{i}.{s}");
        let more = if more_bits(i, p.n_layers) { GgmlType::Q6_K } else { GgmlType::Q4_K };
        let mut mat = |name: &str, k: u64, rows: u64, ty: GgmlType, rng: &mut Rng| {
            w.tensor(&n(name), &[k, rows], ty, quant_bytes(ty, k * rows, rng));
        };
        mat("attn_q.weight", d, q_dim, GgmlType::Q4_K, &mut rng);
        mat("attn_k.weight", d, kv_dim, GgmlType::Q4_K, &mut rng);
        mat("attn_v.weight", d, kv_dim, more, &mut rng);
        mat("attn_output.weight", q_dim, d, GgmlType::Q4_K, &mut rng);
        mat("ffn_gate.weight", d, ff, GgmlType::Q4_K, &mut rng);
        mat("ffn_up.weight", d, ff, GgmlType::Q4_K, &mut rng);
        mat("ffn_down.weight", ff, d, more, &mut rng);
        w.tensor(&n("attn_norm.weight"), &[d], GgmlType::F32, f32s(d, 1.0, &mut rng));
        w.tensor(&n("ffn_norm.weight"), &[d], GgmlType::F32, f32s(d, 1.0, &mut rng));
        if p.qkv_bias {
            w.tensor(&n("attn_q.bias"), &[q_dim], GgmlType::F32, f32s(q_dim, 0.0, &mut rng));
            w.tensor(&n("attn_k.bias"), &[kv_dim], GgmlType::F32, f32s(kv_dim, 0.0, &mut rng));
            w.tensor(&n("attn_v.bias"), &[kv_dim], GgmlType::F32, f32s(kv_dim, 0.0, &mut rng));
        }
    }
    progress(p.n_layers as usize, p.n_layers as usize);
    w.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_matches_llama_cpp_rule_for_28_layers() {
        let layers: Vec<u32> = (0..28).filter(|&i| more_bits(i, 28)).collect();
        // i < 28/8, i >= 7*28/8, and every third layer from 3 + 2
        assert_eq!(layers, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
    }
}
