"""How a run executes on its device: the fast path, its precision and memory layout.

None of it is a hyperparameter: `Speed` chooses how the engine computes, not what it
learns, and a checkpoint is the same either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Speed:
    """How a run executes on its device. None of it is a hyperparameter or changes one.

    `fast` (the default) is the fast path. On CUDA that means bf16 autocast (fp16 with
    loss scaling where bf16 is missing), channels_last convolutions, cuDNN autotuning,
    the fused Adam kernel, and data and augmentation kept on the device. On the CPU it
    means channels_last convolutions (oneDNN's fast layout). `fast=False` is plain fp32
    in the default layout, with the data left on the host and copied batch by batch; on
    CUDA true fp32 (TF32 off, see `exact_fp32`): the reference the fast path is checked
    against (benchmarks.train_step).
    `compile` wraps the model in `torch.compile`; the first steps then pay the
    compile time. `fuse`: how the K fold models of a cross-validated run train where
    they can fuse (U-Nets, SETRs: flairseg.fused): "auto" (the default) in one fused step on a
    GPU where a probe at the start finds it faster, one after another on the CPU; "on"
    fused, "off" one after another.
    """

    fast: bool = True
    compile: bool = False
    fuse: str = "auto"


FAST = Speed()  # the default
FUSE_HELP = (
    "cross-validated runs: the fold models train in one fused step (U-Net, SETR); --no-fuse: "
    "one after another; neither: fused on a GPU where a probe at the start finds it faster"
)


def fuse_mode(flag: bool | None) -> str:
    """`--fuse` / `--no-fuse` / neither as Speed.fuse: "on", "off", "auto"."""
    return "auto" if flag is None else ("on" if flag else "off")


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype on CUDA when `amp` (bf16, or fp16 without bf16); else None."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 convolutions and matrix products in true fp32 on CUDA, not TF32.

    cuDNN runs fp32 convolutions in TF32 by default on Ampere and later; the reference
    path must be the fp32 it claims to be. The flags are process-wide, so they are
    restored on the way out.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    allow_tf32(False)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def allow_tf32(on: bool) -> None:
    """Process-wide: TF32 for fp32 convolutions (cuDNN) and matrix products (cuBLAS).

    The legacy flags, on purpose: torch refuses a mix of these and its newer
    `fp32_precision` settings, so this project writes only these."""
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def mixed_precision(device: torch.device, amp: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 where supported, else fp16) when `amp`; else nothing."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def true_fp32(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """Around a whole pass (backward included): true fp32 on CUDA when `amp` is off."""
    return exact_fp32() if device.type == "cuda" and not amp else contextlib.nullcontext()


def precision_name(device: torch.device, fast: bool) -> str:
    """What a step on `device` computes its convolutions and products in: fp32, bf16 or fp16.
    (fp32 on CUDA is true fp32: see `exact_fp32`.)"""
    dtype = amp_dtype(device, fast)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def layout(speed: Speed) -> torch.memory_format:
    return torch.channels_last if speed.fast else torch.contiguous_format
