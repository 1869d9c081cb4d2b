"""What the GPU machine is, before anything is measured: printed and saved even if the rest fails.

    python -m benchmarks.preflight [--json FILE]

torch and CUDA versions, the device's name, memory and compute capability, and a tiny
function run through torch.compile on the device (what the compile variants need:
Triton and a C compiler). Each part is reported as it completes; a part that fails
says so and the rest still runs. Exit status 1 when there is no CUDA device or the
compiled function failed, so gpu.sh shows it at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write what was found here")
    args = p.parse_args()
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    ok = torch.cuda.is_available()
    if ok:
        props = torch.cuda.get_device_properties(0)
        found |= {
            "device": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "bf16": torch.cuda.is_bf16_supported(),
        }
    else:
        found["device"] = "no CUDA device"
    print("preflight: " + json.dumps(found), flush=True)
    dump(args.json, found)  # now, in case the compile below outlives the time limit
    if ok:
        started = time.perf_counter()
        try:
            f = torch.compile(lambda x: torch.relu(x) * 2 + 1)
            x = torch.randn(1024, device="cuda")
            agree = bool(torch.allclose(f(x), torch.relu(x) * 2 + 1))
            found["compile"] = {"ok": agree, "seconds": round(time.perf_counter() - started, 1)}
        except Exception as err:  # any failure of the toolchain is the finding itself
            found["compile"] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
        ok = found["compile"]["ok"]
        print("preflight: compile " + json.dumps(found["compile"]), flush=True)
    dump(args.json, found)
    return 0 if ok else 1


def dump(path: str | None, found: dict[str, Any]) -> None:
    """Write what was found so far, whole or not at all (a reader never sees half a file)."""
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(found, f, indent=2)
        os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
