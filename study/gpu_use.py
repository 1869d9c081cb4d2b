"""How busy a trial keeps its GPU: utilisation sampled through the driver's management
library while the trial trains, as `gpu_util_percent` per epoch (study.trainable).

`torch.cuda.utilization` reads NVML (the `gpu` extra: `pip install -e .[gpu]`, the
nvidia-ml-py package), which says, per sample period of 1/6 s to 1 s, the share of time a
kernel ran. A daemon thread of the trial's worker samples it every SAMPLE_S; each epoch
reports the mean of the samples since the last one. On a CPU, or where NVML is not there,
no sampler starts and the metric is absent: never estimated, never zero.
"""

from __future__ import annotations

import threading
import time

import torch

SAMPLE_S = 0.2
_SAMPLERS: dict[str, Sampler] = {}  # one per device in this worker process


class Sampler:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples: list[float] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="flairseg-gpu-use", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                value = float(torch.cuda.utilization(self.device))
            except Exception:  # the driver went away: no more samples, none made up
                return
            with self.lock:
                self.samples.append(value)
            time.sleep(SAMPLE_S)

    def mean_since_last(self) -> float | None:
        with self.lock:
            taken, self.samples = self.samples, []
        return sum(taken) / len(taken) if taken else None


def watch(device: torch.device) -> Sampler | None:
    """Start sampling `device` (once per worker); None on a CPU or without NVML."""
    if device.type != "cuda":
        return None
    key = str(device)
    if key not in _SAMPLERS:
        try:
            torch.cuda.utilization(device)  # NVML there, and the device known to it
        except Exception:
            return None
        _SAMPLERS[key] = Sampler(device)
    return _SAMPLERS[key]


def since_last(device: torch.device) -> dict[str, float]:
    """`{"gpu_util_percent": mean}` of the samples since the last call; empty without."""
    sampler = _SAMPLERS.get(str(device))
    mean = sampler.mean_since_last() if sampler is not None else None
    return {} if mean is None else {"gpu_util_percent": mean}
