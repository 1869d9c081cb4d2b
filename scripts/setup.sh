#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: torch first, then the project.
#   ./scripts/setup.sh           what a study needs (the main job): .venv with torch and the project
#   ./scripts/setup.sh --tests   and what the tests need: the dev extra (pytest, ruff, the static
#                                checkers, optuna-dashboard), Debian's Chromium and PostgreSQL
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
case "${1:-}" in
  "") tests= ;;
  --tests) tests=1 ;;
  *) echo "usage: scripts/setup.sh [--tests]" >&2; exit 2 ;;
esac
if [ -z "$tests" ]; then
  .venv/bin/python -m pip install -q -e .
  exit 0
fi
.venv/bin/python -m pip install -q -e '.[dev]'
# System packages for the tests: Debian's Chromium (the report's browser test) and PostgreSQL
# (the cluster tests' database). Installed when missing and this shell may use apt (root, or
# sudo without a password); otherwise those tests skip and say why. SKIP_SYSTEM_PACKAGES=1
# leaves the system alone.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
if [ -z "${SKIP_SYSTEM_PACKAGES:-}" ] && [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then APT=(apt-get); elif sudo -n true 2>/dev/null; then APT=(sudo apt-get); else APT=(); fi
  if [ ${#APT[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (Debian packages) for the tests"
    "${APT[@]}" update -qq && DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} missing and apt is not usable here; the tests that need them will skip" >&2
  fi
fi
