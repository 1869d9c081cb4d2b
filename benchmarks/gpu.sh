#!/usr/bin/env bash
# The GPU benchmark of the training step, in one call on a GPU machine, within 7 minutes:
#   bash benchmarks/gpu.sh [more benchmarks.train_step flags]   (from any folder)
# Needs only python3 with a CUDA build of torch, numpy and pillow (and pyyaml): no Ray,
# Optuna or MLflow. Writes to $OUT (default: the current folder), each file as it goes:
#   nvidia-smi.txt, preflight.json     what the machine is (a 20 s preflight, kept even
#                                      if everything after it fails)
#   bound_gpu.{jsonl,json,log}         first (2 min): what bounds the U-Net step
#   train_step_gpu.jsonl               one JSON line per measurement, the moment it is taken
#   train_step_gpu.json                the figures so far, rewritten after every row
#   train_step_gpu.log                 the console
# Each measurement runs in its own process under its own limit; the compile variants run
# last. Exit status: that of benchmarks.train_step (0 all measured, 1 some failed: its
# last line names them), or 124 when the whole run hit its hard stop.
set -uo pipefail
out=$(mkdir -p "${OUT:-.}" && cd "${OUT:-.}" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
export FLAIRSEG_CACHE=${FLAIRSEG_CACHE:-/tmp/flairseg-cache}
# $PYTHON, else the project's .venv where there is one (a CPU machine), else python3
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
# the basics, then what explains odd figures (exclusive compute mode fails packing, a MIG
# slice has less than the datasheet peak); a field a driver lacks must not cost the basics
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nvidia-smi --query-gpu=compute_mode,mig.mode.current,persistence_mode,power.limit --format=csv
} > "$out/nvidia-smi.txt" 2>&1
cat "$out/nvidia-smi.txt"
# one compile thread: no worker pool to start; the device facts are saved before the compile
TORCHINDUCTOR_COMPILE_THREADS=1 timeout 20 "$python" -m benchmarks.preflight \
    --json "$out/preflight.json" \
    || echo "preflight: failed or timed out (exit $?); measuring what can be measured"
rm -f "$out/train_step_gpu.jsonl" "$out/bound_gpu.jsonl"
# first, within 2 minutes: what bounds today's U-Net step (batch 16, 32, 64; the step
# replayed as one CUDA graph), so that the rest measures the right thing ($BOUND_FLAGS:
# more flags for this call, e.g. a CPU run's)
timeout -k 5 "${BOUND_STOP_S:-110}" "$python" -m benchmarks.train_step --device cuda --models unet \
    --bound --no-steps --budget-s 100 --limit-s 90 --json "$out/bound_gpu.json" \
    --rows "$out/bound_gpu.jsonl" ${BOUND_FLAGS:-} 2>&1 | tee "$out/bound_gpu.log"
# then 280 s of measurements; the hard stop after it (HARD_STOP_S) only catches a hang in
# the parent itself. Flags given to this script come last, so they override these.
timeout -k 5 "${HARD_STOP_S:-300}" "$python" -m benchmarks.train_step --device cuda --compile --agreement \
    --sync-check --fused --packing --budget-s 280 --limit-s 60 --compile-limit-s 100 \
    --packing-limit-s 60 --packing-epochs 12 --json "$out/train_step_gpu.json" --rows "$out/train_step_gpu.jsonl" \
    "$@" 2>&1 | tee "$out/train_step_gpu.log"
