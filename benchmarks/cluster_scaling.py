"""Does a second node pay? The same trials on one Ray node of 1 CPU, then on two such nodes.

    python -m benchmarks.cluster_scaling [--trials 8] [--epochs 15] [--json FILE]

A real Ray cluster on loopback (head on 127.0.0.2, a second node on 127.0.0.3, one CPU each,
started with `ray start --block` as child processes and stopped at the end). The same search
(U-Net width 16, Combo loss, fixed alphas, lr 1e-3, `--epochs` each, 64 px, synthetic
default, no early stopping, concurrency 2) runs through `python -m study.run --address`
first on the head alone, then with the second node joined. The whole `study.run` process is
timed (connecting, data to the object store, MLflow, the final test scoring and report
included), and Tune's fit time from its summary is shown beside it.

First, as the machine's own bound, the same trial trains in a plain process (no Ray, one
thread) alone and then two such processes side by side: on a machine whose cores slow
each other down (shared caches, memory bandwidth, a VM's vCPUs) no scheduler can scale
better than that pair does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.loopback import RAY_ENV, RayNode, free_port, wait_nodes
from benchmarks.study_overhead import fixed_points_search, trial_config
from flairseg.train import default_data, write_json


def study(folder: Path, address: str, name: str, trials: int, epochs: int) -> tuple[float, dict]:
    search = fixed_points_search("cluster scaling benchmark", trials, epochs, 64, 2, 1)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(search))
    out = folder / f"{name}.json"
    argv = [
        sys.executable, "-m", "study.run", "--search", str(path), "--data", str(default_data()),
        "--address", address, "--storage", str(folder / "studies"),
        "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}", "--json", str(out),
        "--status-every", "3600",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=folder, stdout=subprocess.DEVNULL, env=RAY_ENV)
    return time.perf_counter() - started, json.loads(out.read_text())


def plain_epochs(epochs: int) -> float:
    """Seconds per epoch of one trial in this process: 1 thread, no Ray (median epoch)."""
    import torch

    from flairseg.dataset import load_dataset
    from flairseg.engine import train

    torch.set_num_threads(1)
    config = trial_config(epochs, 64)
    data = load_dataset(default_data(), config)
    marks = [time.perf_counter()]
    train(config, data, on_epoch=lambda report: marks.append(time.perf_counter()))
    steps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
    return steps[len(steps) // 2]


def machine_bound(epochs: int) -> tuple[float, list[float]]:
    """Epoch seconds of a plain trial alone, then of two running side by side."""
    code = f"from benchmarks.cluster_scaling import plain_epochs; print(plain_epochs({epochs}))"

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)

    def result(proc: subprocess.Popen) -> float:
        out, _ = proc.communicate()
        return float(out.strip().splitlines()[-1])

    alone = result(start())
    pair = [start(), start()]
    return alone, [result(p) for p in pair]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    default_data()  # generated before any timing
    alone, pair = machine_bound(min(args.epochs, 10))
    bound = max(pair) / alone / 2
    with tempfile.TemporaryDirectory(prefix="flairseg-scaling-") as tmp:
        folder = Path(tmp)
        head = RayNode("127.0.0.2", cpus=1, head_port=free_port("127.0.0.2"))
        node = None
        try:
            wait_nodes(head.address, 1)
            one_s, one = study(folder, head.address, "one_node", args.trials, args.epochs)
            node = RayNode("127.0.0.3", cpus=1, address=head.address)
            wait_nodes(head.address, 2)
            two_s, two = study(folder, head.address, "two_nodes", args.trials, args.epochs)
        finally:
            if node is not None:
                node.close()
            head.close()
    print(
        f"the machine's bound: a plain trial's epoch takes {alone:.2f} s alone and "
        f"{pair[0]:.2f} / {pair[1]:.2f} s with a second beside it, so two cores give at best "
        f"{bound:.2f}x the time of one"
    )
    print(f"{args.trials} trials x {args.epochs} epochs, 64 px, U-Net width 16, 1 CPU per trial")
    print(f"{'':<22}{'study.run s':>12}{'ratio':>8}{'Tune fit s':>12}{'ratio':>8}")
    print(f"{'one node, 1 CPU':<22}{one_s:>12.1f}{1.0:>8.2f}{one['seconds']:>12.1f}{1.0:>8.2f}")
    print(
        f"{'two nodes, 1 CPU each':<22}{two_s:>12.1f}{two_s / one_s:>8.2f}"
        f"{two['seconds']:>12.1f}{two['seconds'] / one['seconds']:>8.2f}"
    )
    if args.json:
        write_json(
            args.json,
            {
                "trials": args.trials,
                "epochs": args.epochs,
                "one_node_s": round(one_s, 1),
                "two_nodes_s": round(two_s, 1),
                "ratio": round(two_s / one_s, 3),
                "fit_ratio": round(two["seconds"] / one["seconds"], 3),
                "plain_epoch_s_alone": round(alone, 3),
                "plain_epoch_s_side_by_side": [round(t, 3) for t in pair],
                "machine_bound_ratio": round(bound, 3),
            },
        )


if __name__ == "__main__":
    main()
