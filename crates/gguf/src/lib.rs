//! GGUF: a strict, bounded parser (file -> metadata + tensor views) and a small writer.
//!
//! Invariants the parser guarantees for every `Gguf` it returns:
//! - every count, length and size was checked against the bytes remaining, so a
//!   hostile header can never make us allocate more than O(file size);
//! - all size arithmetic is checked (no wraparound, no overflow panics);
//! - tensors are contiguous, aligned, in order, and lie inside the file
//!   (offset == running padded size, as llama.cpp requires);
//! - keys and tensor names are unique.

mod parse;
mod types;
mod writer;

pub use parse::{parse, Gguf, GgufFile, TensorInfo};
pub use types::GgmlType;
pub use writer::{GgufWriter, RawWriter};

/// Largest alignment we accept (llama.cpp proposals cap it at 1 MiB too).
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// ggml's limit on tensor names (including the terminating NUL there).
pub const MAX_TENSOR_NAME: usize = 64;
/// Spec keys are short ASCII; anything longer is hostile.
pub const MAX_KEY_LEN: u64 = 1 << 16;
pub const MAX_DIMS: u32 = 4;

/// A metadata value. Arrays are typed vectors so that a tokenizer asking for
/// `[f32]` can never be handed `[u8]` reinterpreted.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Array),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "u8",
            Array::I8(_) => "i8",
            Array::U16(_) => "u16",
            Array::I16(_) => "i16",
            Array::U32(_) => "u32",
            Array::I32(_) => "i32",
            Array::F32(_) => "f32",
            Array::Bool(_) => "bool",
            Array::String(_) => "string",
            Array::U64(_) => "u64",
            Array::I64(_) => "i64",
            Array::F64(_) => "f64",
        }
    }
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
            Value::Array(_) => "array",
        }
    }

    /// Any integer type that fits in u64 without loss.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any integer type as i64 (u64 above i64::MAX is None).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I64(v) => Some(v),
            _ => self.as_u64().map(|v| v as i64).or(match *self {
                Value::I8(v) => Some(v as i64),
                Value::I16(v) => Some(v as i64),
                Value::I32(v) => Some(v as i64),
                _ => None,
            }),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Everything that can be wrong with a GGUF file. Each variant names the
/// field (and tensor or key) and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("file truncated: {field} needs {needed} bytes at offset {offset}, file has {available} left")]
    Truncated { field: String, offset: u64, needed: u64, available: u64 },
    #[error("bad magic {found:02x?}: not a GGUF file (expected \"GGUF\"){hint}")]
    BadMagic { found: [u8; 4], hint: &'static str },
    #[error("unsupported GGUF version {version}{hint}")]
    Version { version: u32, hint: &'static str },
    #[error("{field} = {value} exceeds what the remaining {remaining} bytes can hold")]
    CountTooLarge { field: String, value: u64, remaining: u64 },
    #[error("metadata key #{index}: {problem}")]
    BadKey { index: u64, problem: String },
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },
    #[error("metadata {key:?}: unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("metadata {key:?}: {problem}")]
    BadValue { key: String, problem: String },
    #[error("general.alignment: {problem}")]
    BadAlignment { problem: String },
    #[error("tensor #{index} ({name:?}): {problem}")]
    BadTensor { index: u64, name: String, problem: String },
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor { name: String },
    #[error("tensor {name:?}: offset {offset} is not where it must be (expected {expected}: tensors must be contiguous, aligned and in order)")]
    BadOffset { name: String, offset: u64, expected: u64 },
    #[error("tensor data truncated: tensors need {needed} bytes from offset {data_start}, file has {file_len} bytes")]
    DataTruncated { data_start: u64, needed: u64, file_len: u64 },
}

pub type Result<T> = std::result::Result<T, GgufError>;
