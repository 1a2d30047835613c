#!/usr/bin/env bash
# Regenerates the Python client's gRPC stubs from schema/proto (run after changing the API).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "grpcio-tools>=1.66"
out=clients/python/loupe/v1
protos=(common features internals steering monitoring)
python3 -m grpc_tools.protoc -I schema/proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" $(printf "schema/proto/loupe/v1/%s.proto " "${protos[@]}")
# protoc writes loupe/v1/*_pb2*.py under $out; flatten and make the imports relative.
mv "$out"/loupe/v1/* "$out"/ && rm -r "$out"/loupe
for name in "${protos[@]}"; do
  sed -i "s/^from loupe\.v1 import ${name}_pb2/from . import ${name}_pb2/" "$out"/*.py "$out"/*.pyi
done
