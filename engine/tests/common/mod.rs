//! Shared by the engine's integration tests: the default model (fetched by
//! `scripts/setup.sh`) loaded once, and the fixtures written by `reference/engine_parity.py`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use loupe_engine::Model;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// SmolLM2-135M-Instruct from `$LOUPE_HOME`. Missing model = failing test, never a skip.
pub fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = default_model_path();
        assert!(path.exists(), "{} is missing: run scripts/setup.sh first", path.display());
        Model::load(&path).expect("load the default model")
    })
}

/// The default model, where scripts/setup.sh puts it (`$LOUPE_HOME`, else `~/.cache/loupe`;
/// the CLI's default, loupe_query::config, says the same).
pub fn default_model_path() -> PathBuf {
    let home = std::env::var_os("LOUPE_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/loupe"));
    home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn load_safetensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &Device::Cpu).expect("read fixture")
}

pub fn prompts_fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("smollm2_prompts.json")).expect("read prompts fixture");
    serde_json::from_str(&text).unwrap()
}

/// Max absolute difference, and the reference's max absolute value.
pub fn max_abs_error(actual: &Tensor, expected: &Tensor) -> (f32, f32) {
    assert_eq!(actual.dims(), expected.dims(), "shapes differ");
    let err = (actual - expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    (err, scale)
}

/// Relative tolerance per position: max abs error <= this x the position's L2 norm.
pub const POSITION_TOLERANCE: f32 = 1e-4;

/// Compares `[seq, d]` hidden states position by position: at each position the max abs
/// error must be <= `POSITION_TOLERANCE` x that position's L2 norm in the reference. A bound
/// relative to the whole tensor would be set by the BOS attention sink (norm ~22,000 at
/// layer 20, against ~10-100 elsewhere) and exceed the other positions' signal.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shapes differ");
    let actual = actual.to_vec2::<f32>().unwrap();
    let expected = expected.to_vec2::<f32>().unwrap();
    for (position, (a, e)) in actual.iter().zip(&expected).enumerate() {
        let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = a.iter().zip(e).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max);
        assert!(err <= POSITION_TOLERANCE * norm, "{what}, position {position}: max abs error {err} > {POSITION_TOLERANCE} x the position's norm {norm}");
    }
}

/// Compiles a CUDA kernel of the engine (`src/...cu`) for the CPU under the block emulator
/// (`tests/host_cuda/cuda_on_cpu.h`) with the harness `tests/host_cuda/{main}`; needs a C++20
/// compiler (`c++`, or $CXX; Debian's build-essential).
pub fn cuda_kernel_on_cpu(main: &str, kernel: &str, dir: &std::path::Path) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join(main.trim_end_matches(".cpp"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = std::process::Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread"])
        .arg(format!("-DKERNEL=\"{}\"", root.join(kernel).display()))
        .arg(root.join("tests/host_cuda").join(main))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cxx} (a C++20 compiler; Debian's build-essential): {e}"));
    assert!(out.status.success(), "compiling {kernel} for the CPU failed:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
}
