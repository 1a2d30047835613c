//! Hugging Face model folders: `config.json` + one or more `*.safetensors` files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::WeightMap;
use crate::error::{EngineError, Result};

/// The safetensors files of a model folder, sorted (sharded checkpoints split tensors over
/// `model-0000k-of-0000n.safetensors`).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|ext| ext == "safetensors")).collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::BadFile { path: dir.into(), format: "Hugging Face model folder", reason: "no *.safetensors file found".into() });
    }
    Ok(files)
}

/// Loads every tensor of the folder's safetensors files as f32.
pub fn load_weights(dir: &Path) -> Result<WeightMap> {
    let mut tensors = HashMap::new();
    for file in safetensors_files(dir)? {
        let loaded = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| EngineError::BadFile { path: file.clone(), format: "safetensors", reason: e.to_string() })?;
        for (name, tensor) in loaded {
            let tensor = tensor.to_dtype(DType::F32).map_err(|e| EngineError::BadTensor { path: file.clone(), tensor: name.clone(), reason: e.to_string() })?;
            tensors.insert(name, tensor);
        }
    }
    Ok(WeightMap::new(dir, tensors))
}
