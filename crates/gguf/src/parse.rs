use std::collections::HashMap;
use std::path::Path;

use crate::{Array, GgmlType, GgufError, Result, Value, MAX_ALIGNMENT, MAX_DIMS, MAX_KEY_LEN, MAX_TENSOR_NAME};

/// One tensor's description. `offset` is relative to the start of the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header. Borrows nothing: tensor data is addressed by offsets
/// into the byte slice it was parsed from.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub data_start: u64,
    /// Bytes after the last tensor (allowed, reported by `inspect`).
    pub trailing_bytes: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl Gguf {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

/// A GGUF file with its parsed header: mmapped from disk, or held in memory
/// (a checkpoint converted at load time, e.g. from safetensors).
pub struct GgufFile {
    pub header: Gguf,
    data: Backing,
    pub path: std::path::PathBuf,
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only. A file truncated by another process
        // while mapped can raise SIGBUS; that is documented in ARCHITECTURE.md.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header = parse(&mmap)?;
        Ok(GgufFile { header, data: Backing::Mmap(mmap), path: path.to_path_buf() })
    }

    /// Parses GGUF bytes held in memory; `path` names where they came from.
    pub fn from_bytes(bytes: Vec<u8>, path: impl AsRef<Path>) -> Result<GgufFile> {
        let header = parse(&bytes)?;
        Ok(GgufFile { header, data: Backing::Owned(bytes), path: path.as_ref().to_path_buf() })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }

    /// The raw bytes of a tensor; bounds were proven at parse time.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes()[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: field(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, field)?;
        Ok(s.try_into().expect("length checked"))
    }
    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    /// A length-prefixed string; the length is bounded by the bytes left.
    fn bytes_str(&mut self, field: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let len = self.u64(field)?;
        self.take(len, field)
    }
}

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

fn scalar_size(t: u32) -> Option<u64> {
    Some(match t {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        // A string costs at least its 8-byte length.
        T_STRING => 8,
        _ => return None,
    })
}

fn read_scalar(c: &mut Cursor, t: u32, key: &str) -> Result<Value> {
    let f = || format!("value of {key:?}");
    Ok(match t {
        T_U8 => Value::U8(c.array::<1>(&f)?[0]),
        T_I8 => Value::I8(c.array::<1>(&f)?[0] as i8),
        T_U16 => Value::U16(u16::from_le_bytes(c.array(&f)?)),
        T_I16 => Value::I16(i16::from_le_bytes(c.array(&f)?)),
        T_U32 => Value::U32(c.u32(&f)?),
        T_I32 => Value::I32(i32::from_le_bytes(c.array(&f)?)),
        T_F32 => Value::F32(f32::from_le_bytes(c.array(&f)?)),
        T_BOOL => match c.array::<1>(&f)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => {
                return Err(GgufError::BadValue {
                    key: key.into(),
                    problem: format!("bool byte is {b}, must be 0 or 1"),
                })
            }
        },
        T_STRING => {
            let s = c.bytes_str(&f)?;
            Value::String(
                String::from_utf8(s.to_vec()).map_err(|e| GgufError::BadValue {
                    key: key.into(),
                    problem: format!("string is not UTF-8 ({e})"),
                })?,
            )
        }
        T_U64 => Value::U64(c.u64(&f)?),
        T_I64 => Value::I64(i64::from_le_bytes(c.array(&f)?)),
        T_F64 => Value::F64(f64::from_le_bytes(c.array(&f)?)),
        other => return Err(GgufError::UnknownValueType { key: key.into(), type_id: other }),
    })
}

fn read_array(c: &mut Cursor, key: &str) -> Result<Array> {
    let f = || format!("array header of {key:?}");
    let elem = c.u32(&f)?;
    let n = c.u64(&f)?;
    if elem == T_ARRAY {
        return Err(GgufError::BadValue { key: key.into(), problem: "nested arrays are not supported".into() });
    }
    let size = scalar_size(elem).ok_or_else(|| GgufError::UnknownValueType { key: key.into(), type_id: elem })?;
    // Every element needs at least `size` bytes: a count the file cannot hold
    // is rejected before any allocation.
    match n.checked_mul(size) {
        Some(total) if total <= c.remaining() => {}
        _ => {
            return Err(GgufError::CountTooLarge {
                field: format!("array length of {key:?}"),
                value: n,
                remaining: c.remaining(),
            })
        }
    }
    let n = n as usize;
    macro_rules! collect {
        ($variant:ident, $pat:ident) => {{
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                match read_scalar(c, elem, key)? {
                    Value::$pat(x) => v.push(x),
                    _ => unreachable!("read_scalar returns the requested type"),
                }
            }
            Array::$variant(v)
        }};
    }
    Ok(match elem {
        T_U8 => Array::U8(c.take(n as u64, &f)?.to_vec()),
        T_I8 => collect!(I8, I8),
        T_U16 => collect!(U16, U16),
        T_I16 => collect!(I16, I16),
        T_U32 => collect!(U32, U32),
        T_I32 => collect!(I32, I32),
        T_F32 => collect!(F32, F32),
        T_BOOL => collect!(Bool, Bool),
        T_STRING => collect!(String, String),
        T_U64 => collect!(U64, U64),
        T_I64 => collect!(I64, I64),
        T_F64 => collect!(F64, F64),
        _ => unreachable!("scalar_size accepted the type"),
    })
}

/// Parses and validates a whole GGUF file held in memory (or mmapped).
pub fn parse(buf: &[u8]) -> Result<Gguf> {
    let mut c = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if &magic != b"GGUF" {
        let hint = if &magic == b"FUGG" { " (byte-swapped: big-endian GGUF is not supported)" } else { "" };
        return Err(GgufError::BadMagic { found: magic, hint });
    }
    let version = c.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        let hint = if version & 0xFFFF == 0 && version != 0 {
            " (looks byte-swapped: big-endian GGUF is not supported)"
        } else if version == 1 {
            " (GGUF v1 used 32-bit lengths and is obsolete)"
        } else {
            " (supported: 2 and 3)"
        };
        return Err(GgufError::Version { version, hint });
    }
    let n_tensors = c.u64(&|| "tensor_count".into())?;
    let n_kv = c.u64(&|| "metadata_kv_count".into())?;
    // Each KV needs >= 8 (key len) + 4 (type) + 1 bytes; each tensor info
    // >= 8 (name len) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
    for (field, value, min) in [("metadata_kv_count", n_kv, 13u64), ("tensor_count", n_tensors, 32)] {
        if value > c.remaining() / min {
            return Err(GgufError::CountTooLarge { field: field.into(), value, remaining: c.remaining() });
        }
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut key_index = HashMap::with_capacity(n_kv as usize);
    for index in 0..n_kv {
        let f = || format!("metadata key #{index}");
        let len = c.u64(&f)?;
        if len == 0 {
            return Err(GgufError::BadKey { index, problem: "empty key".into() });
        }
        if len > MAX_KEY_LEN {
            return Err(GgufError::BadKey { index, problem: format!("key length {len} exceeds {MAX_KEY_LEN}") });
        }
        let raw = c.take(len, &f)?;
        let key = std::str::from_utf8(raw)
            .map_err(|e| GgufError::BadKey { index, problem: format!("key is not UTF-8 ({e})") })?
            .to_string();
        if key_index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        let t = c.u32(&|| format!("value type of {key:?}"))?;
        let value = if t == T_ARRAY { Value::Array(read_array(&mut c, &key)?) } else { read_scalar(&mut c, t, &key)? };
        key_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
        None => 32,
        Some(Value::U32(a)) => {
            let a = *a as u64;
            if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                return Err(GgufError::BadAlignment {
                    problem: format!("{a} is not a power of two in 1..={MAX_ALIGNMENT}"),
                });
            }
            a
        }
        Some(v) => return Err(GgufError::BadAlignment { problem: format!("must be u32, found {}", v.type_name()) }),
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    for index in 0..n_tensors {
        let f = || format!("tensor info #{index}");
        let bad = |name: &str, problem: String| GgufError::BadTensor { index, name: name.to_string(), problem };
        let len = c.u64(&f)?;
        if len as usize >= MAX_TENSOR_NAME || len >= MAX_TENSOR_NAME as u64 {
            return Err(bad("", format!("name length {len} exceeds {}", MAX_TENSOR_NAME - 1)));
        }
        let raw = c.take(len, &f)?;
        let name = std::str::from_utf8(raw).map_err(|e| bad("", format!("name is not UTF-8 ({e})")))?.to_string();
        if name.is_empty() {
            return Err(bad(&name, "empty name".into()));
        }
        let n_dims = c.u32(&f)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(bad(&name, format!("n_dims = {n_dims}, must be 1..={MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let v = c.u64(&f)?;
            if v == 0 || v > i64::MAX as u64 {
                return Err(bad(&name, format!("dims[{d}] = {v} (as i64: {}), must be >= 1", v as i64)));
            }
            dims.push(v);
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&p| p <= i64::MAX as u64))
            .ok_or_else(|| bad(&name, format!("element count of dims {dims:?} overflows i64")))?;
        let type_id = c.u32(&f)?;
        let ty = GgmlType::from_id(type_id)
            .ok_or_else(|| bad(&name, format!("type id {type_id} (as i32: {}) is not a ggml type", type_id as i32)))?;
        let (blck, type_size) = ty.block_geometry();
        if blck == 0 {
            return Err(bad(&name, format!("type {ty} was removed from ggml")));
        }
        if dims[0] % blck != 0 {
            return Err(bad(&name, format!("row length {} is not a multiple of {ty}'s block size {blck}", dims[0])));
        }
        let n_bytes =
            (n_elements / blck).checked_mul(type_size).ok_or_else(|| bad(&name, "byte size overflows u64".into()))?;
        let offset = c.u64(&f)?;
        if tensor_index.contains_key(&name) {
            return Err(GgufError::DuplicateTensor { name });
        }
        tensor_index.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset, // relative for now
            n_bytes,
        });
    }

    let header_end = c.pos as u64;
    let data_start = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut running: u64 = 0;
    for t in tensors.iter_mut() {
        if t.offset != running {
            return Err(GgufError::BadOffset { name: t.name.clone(), offset: t.offset, expected: running });
        }
        let padded = t
            .n_bytes
            .checked_add(alignment - 1)
            .map(|v| v / alignment * alignment)
            .and_then(|p| running.checked_add(p));
        let end = data_start.checked_add(running).and_then(|s| s.checked_add(t.n_bytes));
        match (padded, end) {
            (Some(p), Some(e)) if e <= file_len => {
                t.offset = data_start + running;
                running = p;
            }
            _ => {
                return Err(GgufError::DataTruncated {
                    data_start,
                    needed: running.saturating_add(t.n_bytes),
                    file_len,
                })
            }
        }
    }
    let data_end = tensors.last().map(|t| t.offset + t.n_bytes).unwrap_or(data_start.min(file_len));
    Ok(Gguf {
        version,
        alignment,
        metadata,
        tensors,
        data_start,
        trailing_bytes: file_len.saturating_sub(data_end),
        key_index,
        tensor_index,
    })
}
