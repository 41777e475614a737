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
pub use matmul::{attend, attend_heads, attend_rows, axpy, dot, isa, matmul, matmul_alloc, Isa, MatmulJob};
pub use pack::{PackedKind, PackedMatrix};
pub use pool::Pool;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("tensor type {0} is not supported")]
    Unsupported(specdec_gguf::GgmlType),
    #[error("shape mismatch: {0}")]
    Shape(String),
}
