"""The figures of `benchmarks.train_step` from its rows: ratios, MFU, and the console tables."""

from __future__ import annotations

import statistics
from typing import Any

# dense (no sparsity) tensor-core peaks from the vendors' data sheets, TFLOP/s, by the
# name torch reports; the more specific names first
SHEET_PEAKS = {
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},  # SXM
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0},
    "A10": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0},
}
LABELS = {
    "plain": "plain seed-style loop",
    "plain_tf32": "plain, TF32 allowed",
    "reference": "ours, fast path off",
    "fast": "ours",
    "augment": "ours + augmentation",
    "instance": "ours, instance norm",
    "compile": "ours + torch.compile",
}


def sheet_peaks(device_name: str) -> dict[str, float] | None:
    for key, peaks in SHEET_PEAKS.items():
        if key in device_name:
            return peaks
    return None


def step_summary(rows: list[dict[str, Any]], device: str, batch: int) -> list[dict[str, Any]]:
    """The measured step rows with `ratio_to_plain` (against the fp32 plain loop of the
    same model), the FLOPs of a step, and on a GPU `mfu_sheet` and `mfu_matmul`."""
    steps = [dict(r) for r in rows if r["section"] == "steps" and "error" not in r]
    measured = next((r for r in rows if r["section"] == "peaks" and "error" not in r), None)
    sheet = sheet_peaks(device)
    for model in {r["model"] for r in steps}:
        mine = [r for r in steps if r["model"] == model]
        plain = next((r for r in mine if r["variant"] == "plain"), {})
        fast = next((r for r in mine if r["variant"] == "fast"), {})
        for r in mine:
            if plain:
                r["ratio_to_plain"] = round(r["images_per_s"] / plain["images_per_s"], 3)
            # FLOPs are counted once per model code: the seed's (plain) and ours (fast)
            counted = plain if r["variant"].startswith("plain") else fast
            r.setdefault("flops_per_step", counted.get("flops_per_step"))
            if r["flops_per_step"] is None:
                continue
            achieved = r["flops_per_step"] * r["images_per_s"] / batch / 1e12  # TFLOP/s
            r["tflops"] = round(achieved, 2)
            precision = r["precision"]  # fp16 (no bf16 on the device) has no peak here
            if sheet is not None and precision in sheet:
                r["mfu_sheet"] = round(achieved / sheet[precision], 4)
            if measured is not None and precision in measured:
                r["mfu_matmul"] = round(achieved / measured[precision], 4)
    return steps


def print_tables(args, record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print_steps(args, record)
    print_threads(rows)
    print_agreement(rows)
    print_packing(args, rows)
    print_fused(rows)
    print_bound(rows)


def print_bound(rows: list[dict[str, Any]]) -> None:
    """ms per step by batch size (and graphed): flat means launches bound the step."""
    for r in (r for r in rows if r["section"] == "bound" and "error" not in r):
        figures = {k.removesuffix("_ms"): v for k, v in r.items() if k.endswith("_ms")}
        eager = [(int(k.split("_b")[1]), v) for k, v in figures.items() if k.startswith("eager")]
        per_image = ", ".join(f"batch {b}: {ms:.2f} ms ({ms / b:.3f} ms/image)" for b, ms in eager)
        print(f"\nwhat bounds the {r['model']} step: {per_image}")
        for k, v in figures.items():
            if k.startswith("graph"):
                base = dict(eager).get(int(k.split("_b")[1]))
                ratio = f", {base / v:.2f}x the eager step" if base else ""
                print(f"  as one CUDA graph, {k.split('_')[1]}: {v:.2f} ms{ratio}")


def print_fused(rows: list[dict[str, Any]]) -> None:
    """Each config and K: one by one against fused, seconds per epoch by part."""
    done = [r for r in rows if r["section"] == "fused" and "error" not in r]
    if not done:
        return
    print("\nfold models of a cross-validated trial, one epoch (median), seconds")
    print(f"{'model':<16}{'K':>3} {'path':<12}{'train':>8}{'val':>7}{'ckpt':>7}{'epoch':>8}"
          f"{'model-steps/s':>15}{'peak MB':>9}{'train: one by one / fused':>27}")  # fmt: skip
    alone = {(r["model"], r["k"]): r for r in done if r["path"] == "one by one"}
    for r in done:
        ratio = ""
        if r["path"] == "fused" and (r["model"], r["k"]) in alone:
            ratio = f"{alone[(r['model'], r['k'])]['train_s'] / r['train_s']:.2f}x"
        print(f"{r['model']:<16}{r['k']:>3} {r['path']:<12}{r['train_s']:>8.2f}{r['val_s']:>7.2f}"
              f"{r['checkpoint_s']:>7.2f}{r['epoch_s']:>8.2f}{r['model_steps_per_s']:>15.1f}"
              f"{r['peak_mb']:>9.0f}{ratio:>27}")  # fmt: skip


def print_steps(args, record: dict[str, Any]) -> None:
    steps = record["steps"]
    if not steps:
        return
    peaks = next((r for r in record["rows"] if r["section"] == "peaks" and "error" not in r), None)
    sheet = sheet_peaks(record["device"])
    print(
        f"\ntraining step, {args.image_size} px, batch {args.batch_size}, median of "
        f"{args.repeats} x {args.steps} timed steps after {args.warmup}, {record['device']}"
    )
    if sheet:
        print("  datasheet peaks (dense, TFLOP/s): " + _peaks(sheet))
    if peaks:
        print(f"  measured {peaks['n']}^3 matmul (TFLOP/s): " + _peaks(peaks))
    gpu = any("tflops" in r for r in steps) and (sheet or peaks)
    head = f"{'model':<6}{'variant':<24}{'prec':<6}{'images/s':>10}{'range':>16}{'ms/step':>9}"
    head += f"{'peak MB':>9}{'ours/plain':>11}"
    print(head + (f"{'TFLOP/s':>9}{'MFU sheet':>10}{'MFU mm':>8}" if gpu else ""))
    for r in steps:
        low, high = r["images_per_s_range"]
        line = (
            f"{r['model']:<6}{LABELS[r['variant']]:<24}{r['precision']:<6}"
            f"{r['images_per_s']:>10.1f}{f'{low:.1f}-{high:.1f}':>16}{r['step_ms']:>9.1f}"
            f"{r['peak_mb']:>9.0f}{_num(r.get('ratio_to_plain'), '.2f'):>11}"
        )
        if gpu:
            line += f"{_num(r.get('tflops'), '.1f'):>9}{_pct(r.get('mfu_sheet')):>10}"
            line += f"{_pct(r.get('mfu_matmul')):>8}"
        if "compile_s" in r:
            line += f"  (compile {r['compile_s']:.1f} s)"
        print(line)
    for model in dict.fromkeys(r["model"] for r in steps):
        flops = [r["flops_per_step"] for r in steps if r["model"] == model and
                 r["variant"] == "fast" and "flops_per_step" in r]  # fmt: skip
        if flops:
            print(f"{model}: {flops[0] / 1e9:.1f} GFLOP per step of ours (forward + backward)")


def print_threads(rows: list[dict[str, Any]]) -> None:
    mine = {r["name"]: r for r in rows if r["section"] == "threads" and "error" not in r}
    one = mine.get("1 trial x 2 threads")
    two = [r for n, r in mine.items() if n.startswith("2 trials")]
    if not one or len(two) != 2:
        return
    summed = sum(r["images_per_s"] for r in two)
    print("\nCPU threads, 64 px U-Net width 16, batch 16")
    print(f"  1 trial x 2 threads : {one['images_per_s']:>8.1f} images/s")
    print(
        f"  2 trials x 1 thread : {summed:>8.1f} images/s ({two[0]['images_per_s']:.1f} + "
        f"{two[1]['images_per_s']:.1f}), {summed / one['images_per_s']:.2f}x"
    )


def agreement_figures(row: dict[str, Any]) -> dict[str, Any]:
    fast, ref = row["val_dice"]["fast"], row["val_dice"]["reference"]
    diff = statistics.mean(f - r for f, r in zip(fast, ref, strict=True))
    spread = statistics.stdev(ref) if len(ref) > 1 else float("nan")
    return {"mean_difference": round(diff, 4), "seed_sd": round(spread, 4),
            "within_noise": abs(diff) <= spread}  # fmt: skip


def print_agreement(rows: list[dict[str, Any]]) -> None:
    row = next((r for r in rows if r["section"] == "agreement" and "error" not in r), None)
    if row is None:
        return
    fig = agreement_figures(row)
    names = row["precisions"]
    print(f"\nnumerics: val Dice by seed, fast path ({names['fast']}) against the reference "
          f"({names['reference']})")  # fmt: skip
    for label in ("fast", "reference"):
        scores = row["val_dice"][label]
        print(f"  {label:<10}: {scores}  mean {statistics.mean(scores):.4f}")
    print(
        f"  mean difference {fig['mean_difference']:+.4f}; seed-to-seed sd of the reference "
        f"{fig['seed_sd']:.4f} -> {'within' if fig['within_noise'] else 'OUTSIDE'} the noise"
    )


def packing_figures(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Trials/hour at each packing level whose slots all finished: wall = first start to
    last end over the level's processes."""
    levels: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        if r["section"] == "packing":
            k = int(r["name"].split(" of ")[-1])
            levels.setdefault(k, []).append(r)
    out = {}
    for k, slots in sorted(levels.items()):
        if any("error" in s for s in slots):
            continue
        wall = max(s["end"] for s in slots) - min(s["start"] for s in slots)
        total = sum(s["trials"] for s in slots)
        out[f"{1 / k:g}"] = {
            "wall_s": round(wall, 2),
            "trials_per_hour": round(total / wall * 3600, 1),
        }
    base = out.get("1")
    for fig in out.values():
        if base:
            fig["ratio"] = round(fig["trials_per_hour"] / base["trials_per_hour"], 3)
    return out


def print_packing(args, rows: list[dict[str, Any]]) -> None:
    figures = packing_figures(rows)
    if not figures:
        return
    print(f"\npacking: 64 px U-Nets (width {args.packing_width or 64}) x {args.packing_epochs} "
          "epochs, each epoch as a study's trial runs it (val, evolution, checkpoint)")  # fmt: skip
    for share, fig in figures.items():
        print(
            f"  {float(share):>4.2f} device per trial: {fig['wall_s']:>7.1f} s, "
            f"{fig['trials_per_hour']:>8.0f} trials/hour"
            + (f", {fig['ratio']:.2f}x" if "ratio" in fig else "")
        )


def _peaks(peaks: dict[str, float]) -> str:
    return ", ".join(f"{p} {peaks[p]:g}" for p in ("fp32", "tf32", "bf16") if p in peaks)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
