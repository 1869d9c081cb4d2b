"""How fast is a trial's training step? flairseg's step beside a plain seed-style loop, in one run.

    python -m benchmarks.train_step [--device auto|cpu|cuda] [--models unet,setr]
        [--steps N] [--warmup N] [--repeats N] [--compile] [--threads] [--agreement]
        [--bound] [--fused] [--no-steps] [--packing] [--sync-check] [--budget-s S] [--json FILE] [--rows FILE]

Every measurement runs in a fresh process under its own time limit and the run's budget
(`benchmarks.runner`); each row is printed and appended to `--rows` (JSON lines) as
soon as it is measured, and `--json` is rewritten after every row, so a failure or
a timeout costs only its own row. Exit status: 0 when every measurement ran, 1 when
some failed, timed out or did not fit the budget (the last line names them), 2 for bad
arguments. Order: matmul peaks (CUDA), the step variants, threads, the sync check,
agreement, packing, and the compile variants last (the least tested and the slowest).

Training step: the seed U-Net preset and the seed SETR preset (num_cuts = size / 16) at
128 px, batch 16, `--repeats` timed samples of `--steps` steps after `--warmup`:
- plain: benchmarks/seed_style.py, the seed's model code and loop (sigmoid + BCELoss, a
  DataLoader over decoded float32 arrays, a host-to-device copy per batch) in true fp32;
  on CUDA also plain with TF32 allowed for convolutions and matrix products (cuDNN
  already uses TF32 for convolutions by default);
- ours, fast path off: `flairseg.engine.Trainer.train_epoch` in true fp32, the default
  layout, data left on the host and copied batch by batch, as plain does (no augmentation);
- ours: the fast path (flairseg.engine.Speed: bf16 autocast, channels_last, cuDNN
  autotuning, fused Adam and data resident on the device on CUDA; channels_last on the CPU);
- ours + augmentation: what a trial runs (flips, rotation and zoom on the device);
- ours, instance norm (U-Net): the family search's `norm: instance` on the fast path;
- ours + compile (--compile): torch.compile, with the compile time (cold: an empty
  inductor cache, as on a fresh machine).
Each row names its precision (fp32, tf32, bf16). On a GPU the model FLOP utilisation
(MFU: the FLOPs of a step, counted by torch.utils.flop_counter, per second) is given
against two peaks of that precision: the vendor's dense datasheet figure and the rate of
an 8192^3 matrix product measured on the device first.

--threads (CPU): two trials of 1 thread side by side against one trial of 2 threads.
--agreement: the same config trained with the fast path and the fp32 reference, by seed.
--sync-check (CUDA): one training epoch under torch.cuda.set_sync_debug_mode("error").
--bound: what bounds the step (benchmarks/step_bound.py): batch 16, 32, 64; on CUDA the
step replayed as one CUDA graph.
--fused: a cross-validated trial's epoch of K fold models of each of --models (K = 2, 4; 8 on
CUDA), one by one and fused (flairseg.fused), split into training, val passes and checkpoint.
--packing: 1, 2 and 4 trial processes side by side on one device (64 px seed U-Nets),
each trial doing per epoch what a study's trial does (train, val, evolution, checkpoint),
in trials/hour: what `study.run --gpus-per-trial 1 / 0.5 / 0.25` gives one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import torch

from benchmarks.runner import Runner, Stopped
from benchmarks.tables import agreement_figures, packing_figures, print_tables, step_summary
from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from flairseg.engine import pick_device
from flairseg.errors import ArgumentParser, ConfigError, run_cli
from flairseg.train import default_data, write_json

MODELS = ("unet", "setr")


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def step_spec(args, device: torch.device, model: str, variant: str) -> dict[str, Any]:
    return {
        "kind": "step",
        "device": str(device),
        "variant": variant,
        "model": model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "flops": variant in ("plain", "fast"),
        # the seed's SETR fits only num_cuts = image_size / 16 (8 at 128 px): the same here
        "knobs": {"num_cuts": args.image_size // 16} if model == "setr" else {},
    }


def step_variants(model: str, cuda: bool) -> list[str]:
    variants = ["plain", *(["plain_tf32"] if cuda else []), "reference", "fast", "augment"]
    return variants + (["instance"] if model == "unet" else [])


def run_steps(runner: Runner, args, device: torch.device, variants_of) -> None:
    for model in args.models:
        for variant in variants_of(model):
            spec = step_spec(args, device, model, variant)
            if variant == "compile":
                # a cold compile, as a fresh machine pays it: inductor's on-disk caches
                # would otherwise serve a second run in seconds
                with tempfile.TemporaryDirectory(prefix="flairseg-inductor-") as cache:
                    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                    runner.run("steps", f"{model}/{variant}", spec, args.compile_limit_s, env)
            else:
                runner.run("steps", f"{model}/{variant}", spec, args.limit_s)


def run_threads(runner: Runner, args) -> None:
    base = {
        "kind": "step", "device": "cpu", "variant": "augment", "model": "unet",
        "image_size": 64, "batch_size": 16, "steps": args.thread_steps, "warmup": 2,
        "repeats": 1, "knobs": {"width": 16},
    }  # fmt: skip
    runner.run("threads", "1 trial x 2 threads", {**base, "threads": 2}, args.limit_s)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    names = ["2 trials x 1 thread (a)", "2 trials x 1 thread (b)"]
    runner.run_together("threads", names, [{**base, "threads": 1}] * 2, args.limit_s, env)


def run_packing(runner: Runner, args, device: torch.device) -> None:
    total = max(4, args.packing_trials // 4 * 4)  # the same trials at every packing
    for k in (1, 2, 4):
        spec = {
            "kind": "trial_slot",
            "device": str(device),
            "image_size": 64,
            "trials": total // k,
            "epochs": args.packing_epochs,
            "width": args.packing_width,
            # the CPUs shared out as Ray would (cpus per trial), never oversubscribed
            "threads": max(1, usable_cpus() // k),
        }
        names = [f"{1 / k:g} device per trial, slot {i + 1} of {k}" for i in range(k)]
        runner.run_together("packing", names, [spec] * k, args.packing_limit_s)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks.train_step", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--models", default="unet,setr", help="comma-separated: unet, setr")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, help="timed steps (default: 6 on CPU, 50 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 2 on CPU, 20 on CUDA)")
    p.add_argument("--repeats", type=int, help="timed samples (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (last)")
    p.add_argument("--threads", action="store_true", help="2 trials x 1 thread vs 1 x 2 (CPU)")
    p.add_argument("--thread-steps", type=int, default=40)
    p.add_argument("--agreement", action="store_true", help="val Dice with and without fast path")
    p.add_argument("--agreement-epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sync-check", action="store_true", help="an epoch with syncs as errors")
    p.add_argument("--fused", action="store_true", help="K fold models fused and one by one")
    p.add_argument("--no-steps", action="store_true", help="leave out the step variants")
    p.add_argument("--bound", action="store_true", help="the step at batch 16/32/64, graphed")
    p.add_argument("--fold-slices", type=int, default=64, help="train slices per fold (--fused)")
    p.add_argument("--packing", action="store_true", help="trials/hour at 1, 2 and 4 per device")
    p.add_argument("--packing-trials", type=int, default=8)
    p.add_argument("--packing-epochs", type=int, default=30)
    p.add_argument("--packing-width", type=int, help="U-Net width (default: the seed's 64)")
    p.add_argument("--budget-s", type=float, default=3600, help="the whole run (default 3600)")
    p.add_argument("--limit-s", type=float, default=300, help="one step variant (default 300)")
    p.add_argument("--compile-limit-s", type=float, default=400, help="one compile variant")
    p.add_argument("--packing-limit-s", type=float, default=600, help="one packing level")
    p.add_argument("--json", help="every figure so far, rewritten after each row")
    p.add_argument("--rows", help="append each row as a JSON line the moment it is measured")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def checked_models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ConfigError(f"--models {text!r}: choose from {', '.join(MODELS)}")
    return models


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        from benchmarks.measure import run_child

        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    args.models = checked_models(args.models)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device cuda: this torch ({torch.__version__}) sees no CUDA device; "
            "use --device cpu (or auto)"
        )
    device = pick_device(None if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (50 if cuda else 6)
    args.warmup = args.warmup or (20 if cuda else 2)
    args.repeats = args.repeats or (3 if cuda else 1)
    runner = Runner(args.budget_s, args.rows, on_row=lambda: save(args, record, runner))
    record: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": usable_cpus(),
        "argv": sys.argv[1:],
        "rows": runner.rows,
    }
    print(f"benchmarks.train_step on {record['device']} (torch {torch.__version__})", flush=True)
    try:
        sections(runner, args, device)
    except (Stopped, KeyboardInterrupt):
        print("stopped: keeping what was measured", file=sys.stderr)
        runner.failed.append("the rest (stopped)")
    finally:
        runner.stop_children()
        save(args, record, runner)
    print_tables(args, record, runner.rows)
    if args.json:
        print(f"\nwrote {args.json}")
    if runner.failed:
        print(f"incomplete: {len(runner.failed)} failed: {'; '.join(runner.failed)}")
        return 1
    return 0


def sections(runner: Runner, args, device: torch.device) -> None:
    """Each section in turn (the runner saves the record after every row); compile last."""
    cuda = device.type == "cuda"
    for size in {args.image_size, 64}:
        load_dataset(default_data(), TrainConfig(image_size=size))  # decode before any timing
    if cuda:
        print("\nmatmul peaks", flush=True)
        runner.run("peaks", "matmul 8192^3", {"kind": "peaks", "device": str(device)}, 120)
    if args.bound:
        print("\nwhat bounds the step", flush=True)
        for model in args.models:
            config = TrainConfig(model=model, image_size=args.image_size)
            spec = {"kind": "step_bound", "device": str(device), "model": model,
                    "config": config.to_dict(), "batches": [16, 32, 64], "steps": args.steps,
                    "warmup": args.warmup, "repeats": args.repeats}  # fmt: skip
            runner.run("bound", f"{model}/batch 16, 32, 64 and a CUDA graph", spec, args.limit_s)
    if not args.no_steps:
        print("\ntraining step", flush=True)
        run_steps(runner, args, device, lambda m: step_variants(m, cuda))
    if args.threads:
        print("\nCPU threads", flush=True)
        run_threads(runner, args)
    if args.sync_check and cuda:
        print("\nsync check", flush=True)
        for model in args.models:
            spec = step_spec(args, device, model, "fast") | {"kind": "sync_check"}
            runner.run("sync_check", f"{model}/sync check", spec, args.limit_s)
    if args.agreement:
        print("\nagreement", flush=True)
        size, width = (128, None) if cuda else (64, 16)
        base = TrainConfig(image_size=size, width=width, epochs=args.agreement_epochs)
        spec = {"kind": "agreement", "device": str(device), "config": base.to_dict(),
                "seeds": args.seeds}  # fmt: skip
        runner.run("agreement", "fast path against fp32", spec, args.limit_s * 2)
    if args.fused:
        print("\nfold models fused", flush=True)
        run_fused(runner, args, device)
    if args.packing:
        print("\npacking", flush=True)
        run_packing(runner, args, device)
    if args.compile:
        print("\ncompile", flush=True)
        run_steps(runner, args, device, lambda m: ["compile"])


def fused_configs(args) -> list[tuple[str, TrainConfig]]:
    """The configs --fused measures, of each of --models: a small one at 64 px (a laptop
    study's) and the seed's preset (SETR: num_cuts = size / 16, as the step rows)."""
    size = args.image_size
    configs = {
        "unet": [
            ("unet w16 64px", TrainConfig(image_size=64, width=16)),
            (f"unet {size}px", TrainConfig(image_size=size)),
        ],
        "setr": [
            ("setr d64 64px", TrainConfig(model="setr", image_size=64, num_cuts=4, dim=64,
                                          depth=2, heads=4, mlp_dim=128)),
            (f"setr {size}px", TrainConfig(model="setr", image_size=size, num_cuts=size // 16)),
        ],
    }  # fmt: skip
    return [c for model in args.models for c in configs[model]]


def run_fused(runner: Runner, args, device: torch.device) -> None:
    """A cross-validated trial's epoch, its K fold models one by one and fused
    (flairseg.fused), for each config of `fused_configs`."""
    ks = (2, 4, 8) if device.type == "cuda" else (2, 4)
    for label, config in fused_configs(args):
        for k in ks:
            for path in ("off", "on"):
                spec = {"kind": "folds_epoch", "device": str(device), "k": k, "path": path,
                        "config": config.to_dict(), "fold_slices": args.fold_slices,
                        "repeats": args.repeats + 1, "model": label}  # fmt: skip
                name = f"{label} K={k} {'fused' if path == 'on' else 'one by one'}"
                runner.run("fused", name, spec, args.limit_s)


def save(args, record: dict[str, Any], runner: Runner) -> None:
    """The tables of what was measured so far, and the JSON record (rewritten whole)."""
    record["steps"] = step_summary(runner.rows, record["device"], args.batch_size)
    record["packing"] = packing_figures(runner.rows)
    agreement = [r for r in runner.rows if r["section"] == "agreement" and "error" not in r]
    if agreement:
        record["agreement"] = agreement[0] | agreement_figures(agreement[0])
    record["failed"] = list(runner.failed)
    record["seconds"] = round(time.monotonic() - (runner.deadline - args.budget_s), 1)
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    run_cli(main)
