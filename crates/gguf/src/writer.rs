//! GGUF writing: `GgufWriter` produces valid files (fixtures, tests, MTP heads);
//! `RawWriter` emits arbitrary field sequences so tests can craft malformed files.

use crate::{Array, GgmlType, Value};

/// Low-level little-endian byte emitter.
#[derive(Default)]
pub struct RawWriter {
    pub buf: Vec<u8>,
}

impl RawWriter {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    pub fn header(&mut self, version: u32, n_tensors: u64, n_kv: u64) -> &mut Self {
        self.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv)
    }
    /// A key followed by a typed value.
    pub fn kv(&mut self, key: &str, v: &Value) -> &mut Self {
        self.str(key);
        self.value(v)
    }
    pub fn value(&mut self, v: &Value) -> &mut Self {
        self.u32(value_type(v));
        self.value_body(v)
    }
    fn value_body(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::U8(x) => self.bytes(&[*x]),
            Value::I8(x) => self.bytes(&[*x as u8]),
            Value::U16(x) => self.bytes(&x.to_le_bytes()),
            Value::I16(x) => self.bytes(&x.to_le_bytes()),
            Value::U32(x) => self.u32(*x),
            Value::I32(x) => self.bytes(&x.to_le_bytes()),
            Value::F32(x) => self.bytes(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes(&[*x as u8]),
            Value::String(s) => self.str(s),
            Value::U64(x) => self.u64(*x),
            Value::I64(x) => self.bytes(&x.to_le_bytes()),
            Value::F64(x) => self.bytes(&x.to_le_bytes()),
            Value::Array(a) => {
                let (t, n) = (array_elem_type(a), a.len() as u64);
                self.u32(t).u64(n);
                macro_rules! each {
                    ($v:expr, $w:ident) => {
                        for x in $v {
                            self.value_body(&Value::$w(x.clone()));
                        }
                    };
                }
                match a {
                    Array::U8(v) => each!(v, U8),
                    Array::I8(v) => each!(v, I8),
                    Array::U16(v) => each!(v, U16),
                    Array::I16(v) => each!(v, I16),
                    Array::U32(v) => each!(v, U32),
                    Array::I32(v) => each!(v, I32),
                    Array::F32(v) => each!(v, F32),
                    Array::Bool(v) => each!(v, Bool),
                    Array::String(v) => each!(v, String),
                    Array::U64(v) => each!(v, U64),
                    Array::I64(v) => each!(v, I64),
                    Array::F64(v) => each!(v, F64),
                }
                self
            }
        }
    }
    pub fn tensor_info(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    pub fn pad_to(&mut self, alignment: usize) -> &mut Self {
        while !self.buf.len().is_multiple_of(alignment) {
            self.buf.push(0);
        }
        self
    }
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn array_elem_type(a: &Array) -> u32 {
    match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::String(_) => 8,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    }
}

/// Builds a valid GGUF v3 file.
pub struct GgufWriter {
    alignment: usize,
    kv: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { alignment: 32, kv: Vec::new(), tensors: Vec::new() }
    }
    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        if key == "general.alignment" {
            if let Value::U32(a) = v {
                self.alignment = a as usize;
            }
        }
        self.kv.push((key.to_string(), v));
        self
    }
    /// `dims` in ggml order (row length first); `data` is the raw encoded bytes.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), dims.to_vec(), ty, data));
        self
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = RawWriter::new();
        w.header(3, self.tensors.len() as u64, self.kv.len() as u64);
        for (k, v) in &self.kv {
            w.kv(k, v);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            w.tensor_info(name, dims, ty.id(), offset);
            offset += (data.len() as u64).div_ceil(self.alignment as u64) * self.alignment as u64;
        }
        w.pad_to(self.alignment);
        for (_, _, _, data) in &self.tensors {
            w.bytes(data);
            w.pad_to(self.alignment);
        }
        w.buf
    }
}
