#!/usr/bin/env bash
# Set up the node in ./.venv: the CPU build of PyTorch (pinned here, not in pyproject.toml, so a
# GPU host can install its CUDA build instead), then the project itself.
#   deploy/setup.sh          runtime only
#   deploy/setup.sh --dev    plus test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # On these machines this takes the local CPU wheel; an open range would pull a CUDA build.
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
fi
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/dicomnode --version
