"""How fast is a trial's training step? flairseg's step beside a plain seed-style loop, in one run.

    python -m benchmarks.train_step [--device auto|cpu|cuda] [--models unet,setr]
        [--steps N] [--warmup N] [--compile] [--threads] [--agreement] [--packing]
        [--json FILE]

Training step (always): the seed U-Net preset and the seed SETR preset (num_cuts 8) at
128 px, batch 16, each timed in a fresh process, one variant at a time:
- plain: benchmarks/seed_style.py, the seed's model code and loop (fp32, sigmoid + BCELoss,
  a DataLoader over decoded float32 arrays, a host-to-device copy per batch);
- ours, reference: `flairseg.engine.Trainer.train_epoch` with the fast path off (fp32,
  default layout), the same work as plain (no augmentation);
- ours: the same with the fast path (flairseg.engine.Speed: bf16, channels_last, cuDNN
  autotuning and data on the device on CUDA; channels_last on the CPU);
- ours + augmentation: what a trial runs (flips, rotation and zoom on the device);
- ours + compile (--compile): torch.compile, with the compile time (cold: an empty
  inductor cache, as on a fresh machine; trials on one machine share the cache after).
It prints images/s, the step time, peak memory (CUDA: the allocator's peak; CPU: the
process's peak RSS), the ratio to plain, the FLOPs of one step (forward and backward,
counted by torch.utils.flop_counter: convolutions, matrix products and attention) and on
a GPU the model FLOP utilisation (MFU) against the device's dense bf16 peak.

--threads (CPU): two trials of 1 thread side by side against one trial of 2 threads
(64 px U-Net of width 16, the laptop trial), in images/s summed over the trials.
--agreement: the same config trained with and without the fast path for a few seeds; val
Dice per seed, the mean difference and the seed-to-seed spread.
--packing: 1, 2 and 4 trial processes side by side on one device (64 px seed U-Nets), in
trials/hour: what `study.run --gpus-per-trial 1 / 0.5 / 0.25` gives one GPU (Ray's
placement itself is tested in tests/test_packing.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

from flairseg.config import TrainConfig
from flairseg.dataset import Part, load_dataset
from flairseg.engine import Speed, Trainer, pick_device, train
from flairseg.train import default_data, write_json

# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device name
BF16_PEAK = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}
VARIANTS = ("plain", "reference", "fast", "augment", "compile")
LABELS = {
    "plain": "plain seed-style loop",
    "reference": "ours, fast path off",
    "fast": "ours",
    "augment": "ours + augmentation",
    "compile": "ours + torch.compile",
}


def bf16_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK.items():
        if key in name:
            return name, peak
    return name, None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def subset(part: Part, n: int) -> Part:
    """The first `n` slices of `part`, cycling when it has fewer."""
    index = torch.arange(n) % len(part)
    return Part(
        images=part.images[index],
        masks=part.masks[index],
        mean=part.mean[index],
        std=part.std[index],
        patient=part.patient[index],
        number=part.number[index],
        patients=part.patients,
    )


def count_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> int:
    """FLOPs of one forward and backward pass (convolutions, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- one variant


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one variant in this process; returns images/s, step ms, peak memory, FLOPs."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = pick_device(spec["device"])
    variant, model_name = spec["variant"], spec["model"]
    size, batch = spec["image_size"], spec["batch_size"]
    config = TrainConfig(
        model=model_name,
        image_size=size,
        batch_size=batch,
        augment=variant == "augment",
        **spec.get("knobs", {}),
    )
    data = load_dataset(default_data(), config)
    warm_n, timed_n = spec["warmup"] * batch, spec["steps"] * batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = None
    if variant == "plain":
        from benchmarks import seed_style

        part = subset(data.train, warm_n + timed_n)
        x, y = part.batch(torch.arange(len(part)))
        images = np.ascontiguousarray(x.numpy())
        masks = np.ascontiguousarray(y.numpy())
        model = seed_style.build(model_name, size).to(device)
        if spec.get("flops"):
            xb, yb = torch.from_numpy(images[:batch]), torch.from_numpy(masks[:batch])
            flops = count_flops(model, xb.to(device), yb.to(device), torch.nn.BCELoss())
        marks: dict[int, float] = {}

        def on_step(done: int) -> None:
            if done in (spec["warmup"], spec["warmup"] + spec["steps"]):
                sync(device)
                marks[done] = time.perf_counter()

        started = time.perf_counter()
        seed_style.train_steps(
            model,
            seed_style.loader(images, masks, batch),
            device,
            spec["warmup"] + spec["steps"],
            on_step,
        )
        warm_s = marks[spec["warmup"]] - started
        timed_s = marks[spec["warmup"] + spec["steps"]] - marks[spec["warmup"]]
    else:
        speed = Speed(fast=variant != "reference", compile=variant == "compile")
        trainer = Trainer(config, device, speed)
        if spec.get("flops"):
            probe = Trainer(config, device, Speed(fast=False))
            xb, yb = data.train.batch(torch.arange(batch), device)
            flops = count_flops(probe.state.model, xb, yb, probe.loss_fn)
            del probe
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
        warm = trainer.to_device(subset(data.train, warm_n))
        timed = trainer.to_device(subset(data.train, timed_n))
        sync(device)
        started = time.perf_counter()
        trainer.train_epoch(warm)
        sync(device)
        warm_s = time.perf_counter() - started
        started = time.perf_counter()
        trainer.train_epoch(timed)
        sync(device)
        timed_s = time.perf_counter() - started
    step_s = timed_s / spec["steps"]
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "model": model_name,
        "variant": variant,
        "images_per_s": round(batch / step_s, 2),
        "step_ms": round(step_s * 1000, 2),
        "peak_mb": round(peak_mb, 1),
        "warmup_s": round(warm_s, 2),
        "threads": torch.get_num_threads(),
    }
    if variant == "compile":
        # the warm-up steps minus what they cost once compiled
        result["compile_s"] = round(warm_s - spec["warmup"] * step_s, 2)
    if flops is not None:
        result["flops_per_step"] = flops
    return result


def child(spec: dict[str, Any], env: dict[str, str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "benchmarks.train_step", "--child", json.dumps(spec)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)


def collect(proc: subprocess.Popen) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a benchmark process failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    return collect(child(spec))


# --------------------------------------------------------------------------- sections


def step_section(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    name, peak = bf16_peak(device)
    variants = [v for v in VARIANTS if v != "compile" or args.compile]
    rows = []
    for model in args.models:
        for variant in variants:
            spec = {
                "device": str(device),
                "variant": variant,
                "model": model,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup": args.warmup,
                "flops": variant in ("plain", "fast"),
                # the seed's SETR fits only num_cuts = image_size / 16 (8 at 128 px): the same here
                "knobs": {"num_cuts": args.image_size // 16} if model == "setr" else {},
            }
            print(f"  {model}: {LABELS[variant]} ...", flush=True)
            if variant == "compile":
                # a cold compile, as a fresh machine pays it: inductor's on-disk caches
                # would otherwise serve a second run in seconds
                with tempfile.TemporaryDirectory(prefix="flairseg-inductor-") as cache:
                    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                    rows.append(collect(child(spec, env)))
            else:
                rows.append(run_one(spec))
    for model in args.models:
        mine = [r for r in rows if r["model"] == model]
        plain = next(r for r in mine if r["variant"] == "plain")
        flops = next(r["flops_per_step"] for r in mine if r["variant"] == "fast")
        for r in mine:
            r["ratio_to_plain"] = round(r["images_per_s"] / plain["images_per_s"], 3)
            r["flops_per_step"] = r.get("flops_per_step", flops)
            if peak is not None:
                achieved = r["flops_per_step"] * r["images_per_s"] / args.batch_size
                r["mfu"] = round(achieved / peak, 4)
    print(
        f"\ntraining step, {args.image_size} px, batch {args.batch_size}, {args.steps} timed "
        f"steps after {args.warmup}, {name}"
        + (f" (bf16 peak {peak / 1e12:.0f} TFLOP/s)" if peak else "")
    )
    head = f"{'model':<6}{'variant':<24}{'images/s':>10}{'ms/step':>10}{'peak MB':>10}{'ours/plain':>12}"
    print(head + ("" if peak is None else f"{'MFU':>8}"))
    for r in rows:
        line = (
            f"{r['model']:<6}{LABELS[r['variant']]:<24}{r['images_per_s']:>10.1f}"
            f"{r['step_ms']:>10.1f}{r['peak_mb']:>10.0f}{r['ratio_to_plain']:>12.2f}"
        )
        if peak is not None:
            line += f"{100 * r['mfu']:>7.1f}%"
        if "compile_s" in r:
            line += f"  (compile {r['compile_s']:.1f} s)"
        print(line)
    for model in args.models:
        flops = next(r["flops_per_step"] for r in rows if r["model"] == model)
        print(f"{model}: {flops / 1e9:.1f} GFLOP per step (forward + backward)")
    return rows


def threads_section(args: argparse.Namespace) -> dict[str, Any]:
    base = {
        "device": "cpu",
        "variant": "augment",
        "model": "unet",
        "image_size": 64,
        "batch_size": 16,
        "steps": args.thread_steps,
        "warmup": 2,
        "knobs": {"width": 16},
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = run_one({**base, "threads": 2})
    pair = [child({**base, "threads": 1}, env), child({**base, "threads": 1}, env)]
    two = [collect(p) for p in pair]
    summed = sum(r["images_per_s"] for r in two)
    print(f"\nCPU threads, 64 px U-Net width 16, batch 16, {args.thread_steps} steps per trial")
    print(f"  1 trial x 2 threads : {one['images_per_s']:>8.1f} images/s")
    print(
        f"  2 trials x 1 thread : {summed:>8.1f} images/s "
        f"({two[0]['images_per_s']:.1f} + {two[1]['images_per_s']:.1f}), "
        f"{summed / one['images_per_s']:.2f}x"
    )
    return {
        "one_trial_two_threads": one["images_per_s"],
        "two_trials_one_thread": [r["images_per_s"] for r in two],
        "ratio": round(summed / one["images_per_s"], 3),
    }


def agreement_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        base = TrainConfig(image_size=128, epochs=args.agreement_epochs)
    else:
        base = TrainConfig(image_size=64, width=16, epochs=args.agreement_epochs)
    data = load_dataset(default_data(), base)
    scores: dict[str, list[float]] = {"fast": [], "reference": []}
    for seed in range(args.seeds):
        for label, speed in (("fast", Speed()), ("reference", Speed(fast=False))):
            result = train(base.replace(seed=seed), data, device=device, speed=speed)
            scores[label].append(round(result.metrics["val_dice"], 4))
    diffs = [f - r for f, r in zip(scores["fast"], scores["reference"], strict=True)]
    spread = statistics.stdev(scores["reference"]) if args.seeds > 1 else float("nan")
    mean_diff = statistics.mean(diffs)
    print(
        f"\nnumerics: {base.model} width {base.width or 'preset'} at {base.image_size} px, "
        f"{base.epochs} epochs, val Dice by seed"
    )
    print(f"  fast path  : {scores['fast']}  mean {statistics.mean(scores['fast']):.4f}")
    print(f"  reference  : {scores['reference']}  mean {statistics.mean(scores['reference']):.4f}")
    print(
        f"  mean difference {mean_diff:+.4f}; seed-to-seed sd of the reference {spread:.4f}"
        f" -> {'within' if abs(mean_diff) <= spread else 'OUTSIDE'} the noise"
    )
    return {
        "config": base.to_dict(),
        "val_dice": scores,
        "mean_difference": round(mean_diff, 4),
        "seed_sd": round(spread, 4),
        "within_noise": abs(mean_diff) <= spread,
    }


def packing_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """k processes side by side, each training trials back to back (a reused Ray actor)."""
    total = max(4, args.packing_trials // 4 * 4)  # the same trials at every packing
    rows = {}
    for k in (1, 2, 4):
        spec = {
            "device": str(device),
            "trials": total // k,
            "epochs": args.packing_epochs,
            "width": args.packing_width,
            # the CPUs shared out as Ray would (cpus per trial), never oversubscribed
            "threads": max(1, (os.cpu_count() or 1) // k),
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.train_step", "--trial-slot", json.dumps(spec)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(k)
        ]
        spans = [collect(p) for p in procs]
        wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
        rows[k] = {"wall_s": round(wall, 2), "trials_per_hour": round(total / wall * 3600, 1)}
    print(
        f"\npacking, {total} trials of a 64 px U-Net (width {args.packing_width or 64}) x "
        f"{args.packing_epochs} epochs on one "
        f"{bf16_peak(device)[0]}"
    )
    for k, r in rows.items():
        ratio = r["trials_per_hour"] / rows[1]["trials_per_hour"]
        print(
            f"  {1 / k:>4.2f} device per trial ({k} at once): {r['wall_s']:>7.1f} s, "
            f"{r['trials_per_hour']:>8.0f} trials/hour, {ratio:.2f}x"
        )
        r["ratio"] = round(ratio, 3)
    return {str(1 / k): r for k, r in rows.items()}


def trial_slot(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    device = pick_device(spec["device"])
    config = TrainConfig(image_size=64, epochs=spec["epochs"], width=spec.get("width"))
    data = load_dataset(default_data(), config)
    torch.zeros(1, device=device)  # the CUDA context before the clock starts
    start = time.time()
    for seed in range(spec["trials"]):
        train(config.replace(seed=seed), data, device=device)
    return {"start": start, "end": time.time()}


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--models", default="unet,setr", help="comma-separated: unet, setr")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, help="timed steps (default: 6 on CPU, 100 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 2 on CPU, 20 on CUDA)")
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    p.add_argument("--threads", action="store_true", help="2 trials x 1 thread vs 1 x 2 (CPU)")
    p.add_argument("--thread-steps", type=int, default=40)
    p.add_argument("--agreement", action="store_true", help="val Dice with and without fast path")
    p.add_argument("--agreement-epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--packing", action="store_true", help="trials/hour at 1, 2 and 4 per device")
    p.add_argument("--packing-trials", type=int, default=8)
    p.add_argument("--packing-epochs", type=int, default=30)
    p.add_argument("--packing-width", type=int, help="U-Net width (default: the seed's 64)")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--trial-slot", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    if args.trial_slot:
        print(json.dumps(trial_slot(json.loads(args.trial_slot))))
        return
    device = pick_device(None if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.steps = args.steps or (100 if cuda else 6)
    args.warmup = args.warmup or (20 if cuda else 2)
    for size in {args.image_size, 64}:
        load_dataset(default_data(), TrainConfig(image_size=size))  # decode before any timing
    record: dict[str, Any] = {
        "device": bf16_peak(device)[0],
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "argv": sys.argv[1:],
    }
    print(f"benchmarks.train_step on {record['device']} (torch {torch.__version__})", flush=True)
    record["steps"] = step_section(args, device)
    if args.threads:
        record["threads"] = threads_section(args)
    if args.agreement:
        record["agreement"] = agreement_section(args, device)
    if args.packing:
        record["packing"] = packing_section(args, device)
    if args.json:
        write_json(args.json, record)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
