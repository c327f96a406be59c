#!/usr/bin/env bash
# Regenerates collector_ext/pb/*_pb2.py and their .pyi stubs from proto/ with pinned tools.
# Usage: proto/generate.sh   (from any directory; installs the pinned generators into a temp venv)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "grpcio-tools==1.85.1" "mypy-protobuf==5.1.0" "protobuf==7.36.2"
cd "$here"
"$venv/bin/python" -m grpc_tools.protoc -I . \
  --python_out="$root" --mypy_out="$root" --plugin=protoc-gen-mypy="$venv/bin/protoc-gen-mypy" \
  collector_ext/pb/*.proto
echo "generated: $(cd "$root" && ls collector_ext/pb/*_pb2.py)"
