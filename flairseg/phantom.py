"""A synthetic FLAIR data set in the kaggle_3m layout, written as real TIFF files.

Each patient is a stack of axial slices of a brain-like head: scalp and skull ring,
grey and white matter with smooth texture, CSF-dark ventricles, on three channels
(pre-contrast, FLAIR, post-contrast) like the LGG set. Most patients carry one
lesion spanning a run of adjacent slices: FLAIR-bright, irregular, with a diffuse
halo beyond its mask and tentacle-like fingers, so the mask is not a plain
threshold of the FLAIR channel. Slices outside the run have empty masks. Lesion
pixels come to about 1-3 % of all pixels, as in the real set.

The same arguments give the same bytes: every random draw comes from a generator
seeded by (seed, patient).

    python -m flairseg.phantom --out DIR [--patients N --slices S --size PX --seed K]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flairseg.errors import ArgumentParser, DataError, run_cli


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate; the defaults are the embedded synthetic default data set."""

    patients: int = 16
    slices: int = 16
    size: int = 128  # pixels per side
    seed: int = 0

    def name(self) -> str:
        return f"phantom-v2-p{self.patients}-s{self.slices}-{self.size}px-seed{self.seed}"


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """White noise low-passed by a Gaussian of `sigma` px (via FFT), scaled to unit std."""
    white = rng.standard_normal((size, size))
    freq = np.fft.fftfreq(size)
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(white) * kernel).real
    return field / (field.std() + 1e-12)


@dataclass
class _Head:
    """One patient's drawn anatomy and lesion; the draws' order is part of the data's bytes."""

    xx: np.ndarray  # pixel grid, centred, in image widths
    yy: np.ndarray
    cx: float  # head centre
    cy: float
    xr: np.ndarray  # the grid in the head's tilted frame
    yr: np.ndarray
    ax: float  # head half-axes
    ay: float
    contrast: np.ndarray  # per channel
    has_lesion: bool
    lesion_z: float  # the lesion's centre slice and half extent, in slices
    lesion_half: float
    lesion_r: float
    lesion_ang: float
    lesion_dist: float
    harmonics: list  # (order, amplitude, phase) of the lesion boundary
    fingers: list  # (angle, length, width) of its tentacles
    mimics: list  # ((x, y), radius, z) of FLAIR-bright spots that are not lesion


def _draw_head(rng: np.random.Generator, s: int, n: int) -> _Head:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) / s - 0.5
    cx, cy = rng.uniform(-0.03, 0.03, 2)
    ax, ay = rng.uniform(0.34, 0.38), rng.uniform(0.40, 0.45)
    tilt = rng.uniform(-0.2, 0.2)
    xr = (xx - cx) * np.cos(tilt) + (yy - cy) * np.sin(tilt)
    yr = -(xx - cx) * np.sin(tilt) + (yy - cy) * np.cos(tilt)
    contrast = rng.uniform(0.85, 1.15, 3)
    has_lesion = rng.random() < 0.85
    lesion = (rng.uniform(0.35, 0.65) * n, rng.uniform(0.18, 0.3) * n, rng.uniform(0.09, 0.14))
    lesion_ang, lesion_dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.18)
    harmonics = [
        (j, rng.uniform(0.05, 0.25) / j**0.5, rng.uniform(0, 2 * np.pi)) for j in range(2, 7)
    ]
    fingers = [
        (rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.3), rng.uniform(0.08, 0.18))
        for _ in range(rng.integers(2, 6))
    ]
    # FLAIR-bright mimics that are not lesion (as small-vessel disease is): the model must tell them apart
    mimics = [
        (rng.uniform(-0.25, 0.25, 2), rng.uniform(0.015, 0.035), rng.uniform(0.2, 0.8))
        for _ in range(rng.integers(1, 4))
    ]
    return _Head(xx, yy, cx, cy, xr, yr, ax, ay, contrast, has_lesion, *lesion, lesion_ang,
                 lesion_dist, harmonics, fingers, mimics)  # fmt: skip


def _anatomy(h: _Head, rng: np.random.Generator, s: int, z: float, scale: float):
    """One slice without lesion: the head, brain masks and the three channels (float)."""
    rho = np.sqrt((h.xr / (h.ax * scale)) ** 2 + (h.yr / (h.ay * scale)) ** 2)
    head, brain = rho < 1.08, rho < 0.97
    skull = head & (rho > 1.0)
    texture = _smooth_noise(rng, s, s / 40)
    white = brain & (rho + 0.06 * _smooth_noise(rng, s, s / 20) < 0.72)
    vent = ((((h.xr - 0.04 * scale) / (0.05 * scale)) ** 2 + (h.yr / (0.13 * scale)) ** 2) < 1) | (
        (((h.xr + 0.04 * scale) / (0.05 * scale)) ** 2 + (h.yr / (0.13 * scale)) ** 2) < 1
    )
    vent &= brain & (abs(z - 0.5) < 0.3)
    scalp = head & ~brain & ~skull
    t1 = np.where(brain, 95.0, 0.0) + white * 25 + skull * 150 + scalp * 60
    flair = np.where(brain, 105.0, 0.0) - white * 15 + skull * 40 + scalp * 30
    t1c = np.where(brain, 100.0, 0.0) + white * 20 + skull * 140 + scalp * 70
    t1[vent], flair[vent], t1c[vent] = 35.0, 20.0, 40.0
    return head, brain, texture, [t1, flair, t1c]


def _lesion(h: _Head, rng, s: int, k: int, scale: float, brain, channels) -> np.ndarray:
    """Add slice `k`'s part of the lesion to `channels` (in place); its mask."""
    t1, flair, t1c = channels
    r_z = h.lesion_r * np.sqrt(1 - ((k + 0.5 - h.lesion_z) / h.lesion_half) ** 2) * scale
    lx = h.cx + h.lesion_dist * np.cos(h.lesion_ang) * scale
    ly = h.cy + h.lesion_dist * np.sin(h.lesion_ang) * scale
    dist = np.hypot(h.xx - lx, h.yy - ly)
    theta = np.arctan2(h.yy - ly, h.xx - lx)
    boundary = np.ones_like(theta)
    for j, amp, phase in h.harmonics:
        boundary += amp * np.cos(j * theta + phase + 0.15 * k)
    for ang, length, width in h.fingers:
        d_ang = np.angle(np.exp(1j * (theta - ang)))
        boundary += length * np.exp(-(d_ang**2) / (2 * width**2))
    level = dist / (r_z * boundary) + 0.12 * _smooth_noise(rng, s, s / 50)
    mask = (level < 1) & brain
    # diffuse oedema: FLAIR stays raised beyond the mask edge and fades out
    halo = 1 / (1 + np.exp(np.clip((level - 1.15) / 0.12, -50, 50)))
    flair += brain * (halo * rng.uniform(40, 70) + mask * rng.uniform(5, 20))
    t1 -= brain * halo * 15
    t1c += mask * (level > 0.7) * rng.uniform(0, 40)  # some lesions enhance at the rim
    return mask


def _patient_volume(spec: PhantomSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One patient: images (S, H, W, 3) uint8 and masks (S, H, W) uint8 in {0, 255}."""
    rng = np.random.default_rng([spec.seed, index])
    n, s = spec.slices, spec.size
    h = _draw_head(rng, s, n)
    images = np.zeros((n, s, s, 3), np.uint8)
    masks = np.zeros((n, s, s), np.uint8)
    for k in range(n):
        z = (k + 0.5) / n
        scale = np.sqrt(max(1 - (2 * z - 1) ** 2 * 0.85, 0.05))
        head, brain, texture, channels = _anatomy(h, rng, s, z, scale)
        mask = np.zeros((s, s), bool)
        if h.has_lesion and abs(k + 0.5 - h.lesion_z) < h.lesion_half:
            mask = _lesion(h, rng, s, k, scale, brain, channels)
        t1, flair, t1c = channels
        for (mx, my), radius, z_mid in h.mimics:
            if abs(z - z_mid) < 0.15:
                blob = np.exp(
                    -(((h.xx - h.cx - mx * scale) ** 2 + (h.yy - h.cy - my * scale) ** 2)
                      / (2 * radius**2))
                )  # fmt: skip
                flair += brain * blob * rng.uniform(40, 65)
        tex = texture * brain
        t1, flair, t1c = t1 + 6 * tex, flair + 8 * tex, t1c + 6 * tex
        stack = np.stack([t1, flair, t1c], axis=-1) * h.contrast
        stack += rng.normal(0, 5, stack.shape) * head[..., None]
        images[k] = np.clip(stack, 0, 255).astype(np.uint8)
        masks[k] = mask.astype(np.uint8) * 255
    return images, masks


def patient_name(index: int) -> str:
    return f"PHANTOM_{index + 1:03d}_20260101"


def write_phantom(out: str | os.PathLike, spec: PhantomSpec = PhantomSpec()) -> Path:
    """Write the data set to `out` (which must not exist or be empty), atomically."""
    out = Path(out)
    for key in ("patients", "slices", "size"):
        if getattr(spec, key) < 1:
            raise DataError(f"--{key} must be at least 1, got {getattr(spec, key)}")
    if spec.size < 16:
        raise DataError(f"--size {spec.size} is too small for a phantom; use at least 16")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = ["Patient,lesion_slices"]
        for i in range(spec.patients):
            name = patient_name(i)
            folder = tmp / name
            folder.mkdir()
            images, masks = _patient_volume(spec, i)
            for k in range(spec.slices):
                Image.fromarray(images[k], "RGB").save(
                    folder / f"{name}_{k + 1}.tif", format="TIFF"
                )
                Image.fromarray(masks[k], "L").save(
                    folder / f"{name}_{k + 1}_mask.tif", format="TIFF"
                )
            rows.append(f"{name},{int((masks.reshape(spec.slices, -1) > 0).any(1).sum())}")
        (tmp / "data.csv").write_text("\n".join(rows) + "\n")
        (tmp / "README.md").write_text(
            f"Synthetic FLAIR phantom written by `python -m flairseg.phantom` "
            f"(patients={spec.patients}, slices={spec.slices}, size={spec.size}, seed={spec.seed}).\n"
        )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def build_parser() -> ArgumentParser:
    """The command line's flags (the documentation's CLI reference is made from it)."""
    parser = ArgumentParser(prog="python -m flairseg.phantom", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to create (kaggle_3m layout)")
    parser.add_argument("--patients", type=int, default=PhantomSpec.patients)
    parser.add_argument("--slices", type=int, default=PhantomSpec.slices, help="slices per patient")
    parser.add_argument("--size", type=int, default=PhantomSpec.size, help="pixels per side")
    parser.add_argument("--seed", type=int, default=PhantomSpec.seed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    spec = PhantomSpec(args.patients, args.slices, args.size, args.seed)
    out = write_phantom(args.out, spec)
    print(f"wrote {spec.patients} patients x {spec.slices} slices at {spec.size} px to {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
