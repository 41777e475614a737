//! Reading hyperparameters and tensors out of a GGUF file, with the semantic
//! checks the parser cannot do (required keys, ranges, exact shapes).

use specdec_gguf::{GgufFile, TensorInfo, Value};
use specdec_kernels::quant::dequantize_row;
use specdec_kernels::{PackedKind, PackedMatrix};

use crate::EngineError;

pub struct WeightSource<'a> {
    pub file: &'a GgufFile,
    pub arch: String,
    /// Force exact f32 weights (golden tests against float references).
    pub force_f32: bool,
}

impl<'a> WeightSource<'a> {
    pub fn new(file: &'a GgufFile) -> Result<Self, EngineError> {
        let arch = file
            .header
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| EngineError::Metadata { key: "general.architecture".into(), problem: "missing".into() })?
            .to_string();
        Ok(WeightSource { file, arch, force_f32: false })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// An integer hyperparameter `{arch}.{suffix}` within `range`.
    pub fn usize(&self, suffix: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize, EngineError> {
        let key = self.key(suffix);
        let v = self
            .file
            .header
            .get(&key)
            .ok_or_else(|| EngineError::Metadata { key: key.clone(), problem: "missing".into() })?;
        match v.as_u64() {
            Some(x) if range.contains(&(x as usize)) && x <= usize::MAX as u64 => Ok(x as usize),
            _ => Err(EngineError::Metadata { key, problem: format!("{v:?} is outside {range:?}") }),
        }
    }

    pub fn usize_or(
        &self,
        suffix: &str,
        range: std::ops::RangeInclusive<usize>,
        default: usize,
    ) -> Result<usize, EngineError> {
        if self.file.header.get(&self.key(suffix)).is_none() {
            return Ok(default);
        }
        self.usize(suffix, range)
    }

    /// A positive finite float hyperparameter, or `default` when absent.
    pub fn f32_or(&self, suffix: &str, default: f32) -> Result<f32, EngineError> {
        let key = self.key(suffix);
        match self.file.header.get(&key) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x as f32),
                _ => Err(EngineError::Metadata { key, problem: format!("{v:?} is not a positive finite number") }),
            },
        }
    }

    /// A string hyperparameter `{arch}.{suffix}`, if present.
    pub fn str_opt(&self, suffix: &str) -> Option<&'a str> {
        self.file.header.get(&self.key(suffix)).and_then(Value::as_str)
    }

    /// A boolean hyperparameter, or `default` when absent.
    pub fn bool_or(&self, suffix: &str, default: bool) -> Result<bool, EngineError> {
        let key = self.key(suffix);
        match self.file.header.get(&key) {
            None => Ok(default),
            Some(v) => {
                v.as_bool().ok_or_else(|| EngineError::Metadata { key, problem: format!("{v:?} is not a bool") })
            }
        }
    }

    /// A whole tensor of the given dims (ggml order) as f32.
    pub fn tensor_f32(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, EngineError> {
        let t = self.tensor(name, dims)?;
        let n: usize = dims.iter().product();
        let mut v = vec![0f32; n];
        dequantize_row(t.ty, self.file.tensor_data(t), &mut v)
            .map_err(|e| EngineError::Tensor(name.into(), e.to_string()))?;
        Ok(v)
    }

    /// A stack of `e` matrices of `n` rows by `k` inputs (GGUF dims [k, n, e]),
    /// one packed matrix each (MoE experts).
    pub fn experts(&self, name: &str, e: usize, n: usize, k: usize) -> Result<Vec<PackedMatrix>, EngineError> {
        let t = self.tensor(name, &[k, n, e])?;
        let data = self.file.tensor_data(t);
        let per = data.len() / e.max(1);
        (0..e)
            .map(|j| {
                let part = &data[j * per..(j + 1) * per];
                let r = if self.force_f32 {
                    PackedMatrix::from_gguf_as(t.ty, part, n, k, PackedKind::F32)
                } else {
                    PackedMatrix::from_gguf(t.ty, part, n, k)
                };
                r.map_err(|err| EngineError::Tensor(format!("{name} (expert {j})"), err.to_string()))
            })
            .collect()
    }

    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<&'a TensorInfo, EngineError> {
        let t = self.file.header.tensor(name).ok_or_else(|| EngineError::MissingTensor(name.into()))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims != want {
            return Err(EngineError::TensorShape { name: name.into(), want, found: t.dims.clone() });
        }
        Ok(t)
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.header.tensor(name).is_some()
    }

    /// A 1-D tensor as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
        let t = self.tensor(name, &[len])?;
        let mut v = vec![0f32; len];
        dequantize_row(t.ty, self.file.tensor_data(t), &mut v)
            .map_err(|e| EngineError::Tensor(name.into(), e.to_string()))?;
        Ok(v)
    }

    /// A weight matrix of `n` output rows by `k` inputs (GGUF dims [k, n]).
    pub fn matrix(&self, name: &str, n: usize, k: usize) -> Result<PackedMatrix, EngineError> {
        let t = self.tensor(name, &[k, n])?;
        let data = self.file.tensor_data(t);
        let r = if self.force_f32 {
            PackedMatrix::from_gguf_as(t.ty, data, n, k, PackedKind::F32)
        } else {
            PackedMatrix::from_gguf(t.ty, data, n, k)
        };
        r.map_err(|e| EngineError::Tensor(name.into(), e.to_string()))
    }
}
