"""The seed's "training region evolution": a few fixed val slices predicted after every epoch.

`pick_slices` chooses the slices (the largest lesions, one per patient first, so the
pictures show something); `Evolution` holds their inputs, ground truth and the
probability map of every epoch as uint8, saves and loads itself as one .npz, and draws
a strip per slice: FLAIR, ground truth, then the prediction at evenly spaced epochs.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from flairseg.dataset import FLAIR, Part
from flairseg.files import atomic_write
from flairseg.viz import blend, contour, flair_grey, heat


def pick_slices(part: Part, k: int = 4) -> list[int]:
    """Indices of up to `k` slices of `part`: largest lesion area, one per patient first."""
    area = part.masks.flatten(1).sum(1).numpy()
    order = np.argsort(-area, kind="stable")
    chosen: list[int] = []
    seen: set[int] = set()
    for i in order:  # one per patient, lesion slices first
        p = int(part.patient[i])
        if area[i] > 0 and p not in seen:
            chosen.append(int(i))
            seen.add(p)
        if len(chosen) == k:
            return chosen
    for i in order:  # then the next largest, empty slices last
        if int(i) not in chosen:
            chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen


@dataclass
class Evolution:
    """images (K, H, W) uint8 FLAIR; masks (K, H, W) {0,1}; probs (E, K, H, W) uint8 (p*255)."""

    images: np.ndarray
    masks: np.ndarray
    names: list[str]
    epochs: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def of(cls, part: Part, index: list[int]) -> Evolution:
        channel = FLAIR if part.images.shape[1] > 1 else 0
        return cls(
            images=part.images[index, channel].numpy().copy(),
            masks=part.masks[index, 0].numpy().copy(),
            names=[f"{part.patients[int(part.patient[i])]}_{int(part.number[i])}" for i in index],
        )

    def add(self, epoch: int, probs: torch.Tensor) -> None:
        """Record the probabilities (K, 1, H, W) of `epoch`; a repeated epoch replaces the old."""
        frame = (probs[:, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        if epoch in self.epochs:
            self.probs[self.epochs.index(epoch)] = frame
        else:
            self.epochs.append(int(epoch))
            self.probs.append(frame)

    def save(self, path: str | os.PathLike) -> Path:
        probs = np.stack(self.probs) if self.probs else np.zeros((0, *self.images.shape), np.uint8)
        with atomic_write(path) as f:
            np.savez_compressed(
                f,
                images=self.images,
                masks=self.masks,
                names=np.array(self.names),
                epochs=np.array(self.epochs, np.int64),
                probs=probs,
            )
        return Path(path)

    @classmethod
    def load(cls, source: str | os.PathLike | bytes) -> Evolution:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with np.load(handle) as z:
            return cls(
                images=z["images"],
                masks=z["masks"],
                names=[str(n) for n in z["names"]],
                epochs=[int(e) for e in z["epochs"]],
                probs=list(z["probs"]),
            )

    def strip(self, k: int, columns: int = 8) -> Image.Image:
        """FLAIR | ground truth | prediction at up to `columns` evenly spaced epochs (last kept)."""
        grey = flair_grey(self.images[k])
        truth = blend(grey, np.array([0, 255, 0], np.uint8), 0.45 * (self.masks[k] > 0))
        picks = _spaced(len(self.epochs), columns)
        panels = [(grey, "FLAIR"), (truth, "truth")]
        for j in picks:
            prob = self.probs[j][k].astype(np.float32) / 255
            panel = blend(grey, heat(prob), 0.75 * prob)
            panel[contour(prob >= 0.5)] = (0, 255, 255)
            panels.append((panel, f"ep {self.epochs[j]}"))
        h, w = grey.shape[:2]
        label = 12
        canvas = Image.new("RGB", (len(panels) * w, h + label), "black")
        draw = ImageDraw.Draw(canvas)
        for i, (panel, text) in enumerate(panels):
            canvas.paste(Image.fromarray(panel), (i * w, label))
            draw.text((i * w + 2, 0), text, fill="white")
        return canvas


STATE_FILE = "state.pt"
EVOLUTION_FILE = "evolution.npz"
EVOLUTION_SLICES = 4  # the slices a study's trial follows


def save_epoch(
    report, evolution: Evolution, inputs: torch.Tensor, folder: str | os.PathLike
) -> None:
    """What a study's trial keeps of each epoch besides its metrics: the evolution slices
    predicted by this epoch's model, then the checkpoint (STATE_FILE) and the evolution
    (EVOLUTION_FILE) written into `folder`. `report`: the engine's EpochReport;
    `inputs`: the evolution slices' standardised images (K, C, H, W)."""
    evolution.add(report.epoch, report.predict(inputs))
    report.save_checkpoint(os.path.join(folder, STATE_FILE))
    evolution.save(os.path.join(folder, EVOLUTION_FILE))


def _spaced(n: int, columns: int) -> list[int]:
    if n <= columns:
        return list(range(n))
    return sorted({round(i * (n - 1) / (columns - 1)) for i in range(columns)})
