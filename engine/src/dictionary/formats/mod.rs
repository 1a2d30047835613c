//! Readers of the public dictionary formats. Each turns its files into
//! [`DictionaryParts`](super::DictionaryParts); detection is by the files present.

pub mod gemma_scope;
pub mod saelens;
pub mod sparsify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use loupe_schema::hook::HookPoint;

use super::Dictionary;
use crate::error::{EngineError, Result};

/// Loads a dictionary folder (or a Gemma Scope `params.npz` file), detecting the format.
pub fn load(path: &Path) -> Result<Dictionary> {
    let dir = if path.is_file() { path.parent().unwrap_or(Path::new(".")) } else { path };
    if !path.exists() {
        return Err(EngineError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such dictionary file or folder")));
    }
    let has = |name: &str| dir.join(name).is_file();
    let parts = if has("sae_weights.safetensors") {
        saelens::load(dir)?
    } else if has("sae.safetensors") {
        sparsify::load(dir)?
    } else if has("params.safetensors") {
        gemma_scope::load_v2(dir)?
    } else if path.is_file() && path.extension().is_some_and(|e| e == "npz") || has("params.npz") {
        let npz = if path.is_file() { path.to_path_buf() } else { dir.join("params.npz") };
        gemma_scope::load_v1(&npz)?
    } else {
        return Err(EngineError::BadFile {
            path: path.into(),
            format: "dictionary",
            reason: "expected a SAELens folder (cfg.json + sae_weights.safetensors), a sparsify folder \
                     (cfg.json + sae.safetensors), Gemma Scope params.npz, or Gemma Scope 2 \
                     (config.json + params.safetensors)"
                .into(),
        });
    };
    Dictionary::from_parts(parts)
}

/// A JSON config file, parsed.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EngineError::BadFile { path: path.into(), format: "JSON", reason: e.to_string() })
}

/// Typed access to a config's fields, with errors naming the file and field.
pub(crate) struct Config<'a> {
    pub path: &'a Path,
    pub value: &'a serde_json::Value,
}

impl Config<'_> {
    pub fn bad(&self, field: &str, problem: impl Into<String>) -> EngineError {
        EngineError::BadField { path: self.path.into(), field: field.into(), problem: problem.into() }
    }

    pub fn get(&self, field: &str) -> Option<&serde_json::Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?.ok_or_else(|| self.bad(field, "is missing (expected a positive integer)"))
    }

    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().filter(|&n| n > 0).map(|n| Some(n as usize)).ok_or_else(|| self.bad(field, format!("is {v}, expected a positive integer"))),
        }
    }

    pub fn str(&self, field: &str) -> Result<&str> {
        self.opt_str(field)?.ok_or_else(|| self.bad(field, "is missing (expected a string)"))
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.bad(field, format!("is {v}, expected a string"))),
        }
    }

    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(field, format!("is {v}, expected true or false"))),
        }
    }

    pub fn hook(&self, field: &str) -> Result<HookPoint> {
        let name = self.str(field)?;
        name.parse::<HookPoint>().map_err(|e| self.bad(field, e.to_string()))
    }
}

/// Named f32 tensors of one weights file, taken one by one with shape checks.
pub(crate) struct Tensors {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    architecture: String,
}

impl Tensors {
    pub fn safetensors(path: &Path, architecture: &str) -> Result<Self> {
        let loaded = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| EngineError::BadFile { path: path.into(), format: "safetensors", reason: e.to_string() })?;
        Self::new(path, loaded.into_iter().collect(), architecture)
    }

    pub fn npz(path: &Path, architecture: &str) -> Result<Self> {
        let loaded = Tensor::read_npz(path).map_err(|e| EngineError::BadFile { path: path.into(), format: "npz", reason: e.to_string() })?;
        Self::new(path, loaded, architecture)
    }

    fn new(path: &Path, loaded: Vec<(String, Tensor)>, architecture: &str) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (name, tensor) in loaded {
            let tensor = tensor.to_dtype(DType::F32).map_err(|e| EngineError::BadTensor { path: path.into(), tensor: name.clone(), reason: e.to_string() })?;
            tensors.insert(name, tensor);
        }
        Ok(Tensors { path: path.into(), tensors, architecture: architecture.into() })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name` with `shape` (a `[d]` vector may also be stored as `[1, d]`).
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.tensors.remove(name).ok_or_else(|| EngineError::MissingTensor { path: self.path.clone(), tensor: name.into(), family: format!("a {} dictionary", self.architecture) })?;
        let tensor = if shape.len() == 1 && tensor.dims() == [1, shape[0]] { tensor.squeeze(0)? } else { tensor };
        super::check_tensor(&self.path, name, &tensor, shape)?;
        Ok(tensor)
    }

    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Shape of `name`, for reading sizes off the weights; errors if missing.
    pub fn dims(&self, name: &str) -> Result<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec()).ok_or_else(|| EngineError::MissingTensor {
            path: self.path.clone(),
            tensor: name.into(),
            family: format!("a {} dictionary", self.architecture),
        })
    }
}

/// Values of a 1-d tensor.
pub(crate) fn host(tensor: &Tensor) -> Result<Vec<f32>> {
    Ok(tensor.flatten_all()?.to_vec1()?)
}
