//! With the `cuda` feature: compiles loupe's GPU kernels (src/dictionary/select.cu,
//! src/model/attention_softmax.cu) to PTX with
//! the CUDA build's nvcc ($NVCC, else `nvcc` on PATH; scripts/build_cuda.sh sets it) for
//! compute capability $CUDA_COMPUTE_CAP (default 90), so that the binary carries them and the
//! driver needs no compiler at run time. The CPU build runs nothing here.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        // The CPU build does not read the kernels (their test compiles them itself).
        return;
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (source, ptx) in [("src/dictionary/select.cu", "select.ptx"), ("src/model/attention_softmax.cu", "attention_softmax.ptx")] {
        println!("cargo:rerun-if-changed={source}");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(out_dir.join(ptx))
            .arg(source)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} (set NVCC, or build with scripts/build_cuda.sh): {e}"));
        assert!(status.success(), "{nvcc} failed to compile {source}");
    }
}
