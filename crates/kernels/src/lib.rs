//! Kernels: weight packing, activation quantization, matrix multiplication for
//! 1..16 rows (verify) and long prompts (prefill), a fork-join pool, and the
//! small f32 operations of a transformer block.

pub mod act;
pub mod matmul;
pub mod ops;
pub mod pack;
pub mod pool;
pub mod quant;

pub use act::{ActScratch, ActStyle, QuantActs};
pub use matmul::{
    attend, attend_heads, attend_rows, attend_rows_bf16, attn_math, axpy, bf16_available, dot, isa, matmul,
    matmul_alloc, matmul_argmax, matmul_gated, set_attn_math, AttnMath, Isa, MatmulJob, RowPost,
};
pub use pack::{PackedKind, PackedMatrix};
pub use pool::Pool;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("tensor type {0} is not supported")]
    Unsupported(specdec_gguf::GgmlType),
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// Pseudo-random test inputs, uniform in [-half_range, half_range) (a fixed
/// LCG, so every run and machine sees the same values).
#[cfg(test)]
pub(crate) fn test_data(n: usize, seed: u32, half_range: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * half_range
        })
        .collect()
}
