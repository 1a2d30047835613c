//! Weight loading. Every format is translated to one naming scheme (Hugging Face module
//! paths, e.g. `model.layers.3.self_attn.q_proj.weight`) and one layout (f32, PyTorch
//! `[out, in]` order, Hugging Face RoPE convention), so model families see a single source.

pub mod gguf;
pub mod safetensors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{EngineError, Result};

/// Named f32 tensors read from one model file or folder.
pub struct WeightMap {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl WeightMap {
    pub fn new(path: impl Into<PathBuf>, tensors: HashMap<String, Tensor>) -> Self {
        WeightMap { path: path.into(), tensors }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns a tensor, checking its shape. `family` names the model that needs
    /// it, for the error message.
    pub fn take(&mut self, name: &str, shape: &[usize], family: &'static str) -> Result<Tensor> {
        let tensor = self.tensors.remove(name).ok_or_else(|| EngineError::MissingTensor { path: self.path.clone(), tensor: name.into(), family: family.into() })?;
        if tensor.dims() != shape {
            return Err(EngineError::WrongShape { path: self.path.clone(), tensor: name.into(), expected: shape.to_vec(), actual: tensor.dims().to_vec() });
        }
        Ok(tensor)
    }

    /// Names left after a model took what it needs (reported, not fatal: files often carry
    /// extra tensors such as rotary caches).
    pub fn remaining(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort();
        names
    }
}
