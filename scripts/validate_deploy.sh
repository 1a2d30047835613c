#!/usr/bin/env bash
# Validates the deployment files offline (no Docker daemon, no cluster): docker-compose.yml
# with Debian's docker-compose, every Kubernetes manifest against the schemas that PyPI's
# kubernetes-validate ships, that each kustomization names files that exist, and the Slurm
# scripts' syntax. The scripts' commands themselves run in tests/e2e/deployment.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[deploy] %s\n' "$*" >&2; }

docker-compose -f docker-compose.yml config --quiet
docker-compose -f docker-compose.yml --profile gpu config --quiet
say "docker-compose.yml: valid (default and gpu profiles)"

validated=0
for file in deploy/k8s/*.yaml; do
  case "$file" in */kustomization.yaml) continue ;; esac
  kubernetes-validate --quiet --strict -k 1.30.0 "$file"
  validated=$((validated + 1))
done
say "deploy/k8s: $validated manifests valid against Kubernetes 1.30"

for kustomization in deploy/k8s/kustomization.yaml deploy/k8s/gpu/kustomization.yaml; do
  dir=$(dirname "$kustomization")
  for resource in $(sed -n 's/^  - \([^ ]*\.yaml\)$/\1/p' "$kustomization") $(sed -n 's/^  - path: \(.*\)$/\1/p' "$kustomization"); do
    [ -f "$dir/$resource" ] || { say "$kustomization names $resource, which does not exist"; exit 1; }
  done
done
say "kustomizations: every resource and patch exists"

for script in deploy/slurm/*.sbatch deploy/slurm/submit.sh; do
  bash -n "$script"
done
say "deploy/slurm: scripts parse"
for script in scripts/build_cuda.sh scripts/gpu_carry.sh scripts/gpu_check.sh; do
  bash -n "$script" || { echo "$script does not parse" >&2; exit 1; }
done
say "GPU scripts (build_cuda, gpu_carry, gpu_check): parse"
