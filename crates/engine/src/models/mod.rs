//! One file per architecture; each serves every weight format.

pub(crate) mod common;
pub mod deepseek2;
pub mod gemma3;
pub mod head;
pub mod llama;

use std::sync::Arc;

use specdec_gguf::GgufFile;
use specdec_kernels::Pool;

use crate::{EngineError, Model};

pub fn load(
    file: Arc<GgufFile>,
    pool: Arc<Pool>,
    force_f32: bool,
    progress: &dyn Fn(usize, usize),
) -> Result<Box<dyn Model>, EngineError> {
    let arch = crate::weights::WeightSource::new(&file)?.arch;
    match arch.as_str() {
        "gemma3" => Ok(Box::new(gemma3::Gemma3::load(file, pool, force_f32, progress)?)),
        "deepseek2" => Ok(Box::new(deepseek2::DeepSeek2::load(file, pool, force_f32, progress)?)),
        "llama" | "qwen2" => Ok(Box::new(llama::Llama::load(file, pool, force_f32, progress)?)),
        other => Err(EngineError::UnsupportedArch(other.to_string())),
    }
}
