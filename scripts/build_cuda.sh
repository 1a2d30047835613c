#!/usr/bin/env bash
# Builds the CUDA binary of loupe (`--device cuda[:N]`) on a machine without a GPU or a
# system CUDA, from registry packages only:
#   - CUDA 13.0's compiler, runtime, cuBLAS, cuRAND, NVRTC and CCCL headers as pinned PyPI
#     wheels, installed under $LOUPE_CUDA_HOME (default ~/.cache/loupe/cuda13);
#   - a link stub for the driver (libcuda.so.1): candle links the driver dynamically, and the
#     real one comes with the NVIDIA driver on the GPU machine (no wheel ships it).
# The binary lands in target/release/loupe-cuda in the checkout (where the Dockerfile's GPU
# image and docker-compose's gpu profile take it from); the default binary stays CPU-only.
#
#   scripts/build_cuda.sh                 # setup + release build for compute capability 9.0 (H100/H200)
#   CUDA_COMPUTE_CAP=80 scripts/build_cuda.sh
#   scripts/build_cuda.sh --setup-only    # the toolkit and stub, no cargo build
#
# On the GPU machine the binary needs libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
# libcudart.so.13 and libnvrtc.so.13 (PyTorch's cu130 wheels carry them: put their
# nvidia/cu13/lib on LD_LIBRARY_PATH) and the driver's libcuda.so.1 (R580 or newer for CUDA 13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

CUDA_HOME_DIR="${LOUPE_CUDA_HOME:-$HOME/.cache/loupe/cuda13}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# nvcc 13.0 exactly: a driver of CUDA 13.0 (R580) cannot load PTX from a newer compiler.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
)

python_site="$CUDA_HOME_DIR/python"
cu="$python_site/nvidia/cu13"
if [ ! -x "$cu/bin/nvcc" ]; then
  echo "installing the CUDA 13.0 toolkit wheels into $python_site"
  python3 -m pip install --quiet --no-deps --target "$python_site" "${WHEELS[@]}"
fi
"$cu/bin/nvcc" --version | tail -2

# The wheels carry versioned libraries only; the linker looks for the unversioned names.
for lib in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
  [ -e "$cu/lib/lib$lib" ] || { echo "missing $cu/lib/lib$lib" >&2; exit 1; }
  ln -sf "lib$lib" "$cu/lib/lib${lib%.so.*}.so"
done

# libcuda.so.1 stub: every driver entry point cudarc declares, as empty functions. It only
# satisfies the linker (its soname makes the loader pick the real driver at run time); it is
# never on a run-time search path.
stub="$cu/lib/stubs/libcuda.so"
if [ ! -e "$stub" ]; then
  cargo fetch --locked >/dev/null
  cudarc_version=$(awk '/^name = "cudarc"$/ {getline; gsub(/"/, "", $3); print $3}' Cargo.lock)
  cudarc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_version" | head -1)
  [ -d "$cudarc_src" ] || { echo "cudarc $cudarc_version sources not found after cargo fetch" >&2; exit 1; }
  mkdir -p "$(dirname "$stub")"
  grep -ohP 'load::<_F>\("\K\w+' "$cudarc_src/src/driver/sys/"*.rs | sort -u | sed 's/.*/void &(void) {}/' >"$CUDA_HOME_DIR/cuda_stub.c"
  count=$(wc -l <"$CUDA_HOME_DIR/cuda_stub.c")
  [ "$count" -gt 100 ] || { echo "found only $count driver symbols in $cudarc_src: the stub would not link" >&2; exit 1; }
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$CUDA_HOME_DIR/cuda_stub.c"
  echo "driver link stub: $count symbols"
fi

if [ "${1:-}" = "--setup-only" ]; then
  echo "toolkit ready in $cu (compute capability $CUDA_COMPUTE_CAP)"
  exit 0
fi

export CUDA_HOME="$cu" CUDA_PATH="$cu" NVCC="$cu/bin/nvcc" PATH="$cu/bin:$PATH"
export CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
export LIBRARY_PATH="$cu/lib:$cu/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
# Same target directory as the CPU build (the dependencies it shares are not rebuilt); the
# binary is copied out, and `cargo build --release -p loupe-cli` relinks the CPU one.
cargo build --release --locked -p loupe-cli --features cuda
out=target/release/loupe-cuda
mkdir -p "$(dirname "$out")"
cp "$CARGO_TARGET_DIR/release/loupe" "$out"
echo "CUDA binary: $out (compute capability $CUDA_COMPUTE_CAP); it needs:"
readelf -d "$out" | awk '/NEEDED/ {print "  " $NF}'
