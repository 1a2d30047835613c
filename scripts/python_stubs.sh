#!/usr/bin/env bash
# Regenerates the Python client's gRPC stubs from schema/proto (run after changing the API).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "grpcio-tools>=1.66"
out=clients/python/loupe/v1
python3 -m grpc_tools.protoc -I schema/proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" schema/proto/loupe/v1/features.proto
# protoc writes loupe/v1/features_pb2*.py under $out; flatten and make the imports relative.
mv "$out"/loupe/v1/* "$out"/ && rm -r "$out"/loupe
sed -i 's/^from loupe\.v1 import features_pb2/from . import features_pb2/' "$out"/features_pb2_grpc.py
