//! Content checksums of models and dictionaries (recorded in the manifest, and part of a
//! job's identity so a checkpoint is never resumed against other weights).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{IndexError, Result};

/// sha256 over a file, or over the sorted files of a folder (names and contents).
pub fn sha256_path(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut files: Vec<PathBuf> = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| IndexError::io(path, e))? {
            let entry = entry.map_err(|e| IndexError::io(path, e))?.path();
            if entry.is_file() {
                files.push(entry);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut buffer = vec![0u8; 1 << 20];
    for file in files {
        if path.is_dir() {
            hasher.update(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        }
        let mut reader = std::fs::File::open(&file).map_err(|e| IndexError::io(&file, e))?;
        loop {
            let n = reader.read(&mut buffer).map_err(|e| IndexError::io(&file, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
    }
    Ok(hex(&hasher.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
