#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: torch first, then the project.
# torch: the CPU wheel 2.13.0 unless .venv already has a torch (install your CUDA build there first
# on a GPU machine) or TORCH_SPEC names another, e.g. TORCH_SPEC='torch==2.13.0' or 'torch'.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${TORCH_SPEC:-}" ] || ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e '.[dev]'
