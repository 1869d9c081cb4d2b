"""Patient splits and the tensors a training run consumes.

Splits are by patient, never by slice: slices of one patient are highly correlated,
so a slice split would leak. Images stay uint8 in memory (4x less than float32, and
cheap to ship through an object store); each slice carries the mean and std of its
own patient volume, per channel, and batches are standardised when drawn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flairseg.config import TrainConfig
from flairseg.data import SliceSet, load_slices
from flairseg.errors import DataError
from flairseg.viz import FLAIR  # defined torch-free there; still importable from here


@dataclass(frozen=True)
class Split:
    """Patient names of each part; `test` is empty when test_fraction is 0."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def split_patients(
    patients: tuple[str, ...] | list[str], val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Shuffle patients with `seed` and cut them into train/val/test.

    A part with a fraction above 0 gets round(n * fraction) patients, at least one;
    a split that leaves any of those parts (or train) empty fails naming the numbers.
    """
    names = sorted(patients)
    n = len(names)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(
            f"split leaves a part empty: {n} patients with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction} give {n - n_val - n_test} train, {n_val} val, {n_test} test"
        )
    shuffled = [names[i] for i in order]
    return Split(
        train=tuple(sorted(shuffled[n_val + n_test :])),
        val=tuple(sorted(shuffled[:n_val])),
        test=tuple(sorted(shuffled[n_val : n_val + n_test])),
    )


@dataclass
class Part:
    """The slices of one split part.

    images (N, C, S, S) uint8; masks (N, 1, S, S) uint8 in {0, 1}; mean and std (N, C)
    float32, the statistics of each slice's patient volume; patient (N,) int64 index
    into `patients`; number (N,) slice numbers.
    """

    images: torch.Tensor
    masks: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    patient: torch.Tensor
    number: torch.Tensor
    patients: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def batch(
        self, index: torch.Tensor, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised images (B, C, S, S) float32 and masks (B, 1, S, S) float32."""
        x = standardise(
            self.images[index].to(device, non_blocking=True), self.mean[index], self.std[index]
        )
        return x, self.masks[index].to(device, non_blocking=True).float()

    def to(self, device: torch.device | str) -> Part:
        return Part(
            *(
                t.to(device)
                for t in (self.images, self.masks, self.mean, self.std, self.patient, self.number)
            ),
            patients=self.patients,
        )


@dataclass
class Dataset:
    """What `train` consumes: the parts, the split, and where the data came from."""

    train: Part
    val: Part
    test: Part | None
    split: Split
    fingerprint: str
    image_size: int
    channels: int


def standardise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(images - mean) / std per slice and channel: images (N, C, S, S) uint8, mean and std (N, C)."""
    mean = mean.to(images.device)[:, :, None, None]
    std = std.to(images.device)[:, :, None, None]
    return (images.float() - mean) / std


def volume_stats(images: np.ndarray, patient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice mean and std (N, C) of each slice's whole patient volume, per channel."""
    mean = np.zeros((len(images), images.shape[-1]), np.float32)
    std = np.ones_like(mean)
    for p in np.unique(patient):
        sel = patient == p
        vol = images[sel].astype(np.float64)
        mean[sel] = vol.mean(axis=(0, 1, 2))
        std[sel] = np.maximum(vol.std(axis=(0, 1, 2)), 1.0)  # a blank volume stays finite
    return mean, std


def make_part(slices: SliceSet, names: tuple[str, ...], channels: int) -> Part:
    wanted = [slices.patients.index(n) for n in names]
    sel = np.isin(slices.patient, wanted)
    images = slices.images[sel]
    if channels == 1:
        images = images[..., FLAIR : FLAIR + 1]
    mean, std = volume_stats(images, slices.patient[sel])
    # renumber patients 0..k-1 within the part, in the order of `names`
    remap = {old: new for new, old in enumerate(wanted)}
    return Part(
        images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        masks=torch.from_numpy(np.ascontiguousarray(slices.masks[sel][:, None])),
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(std),
        patient=torch.tensor([remap[p] for p in slices.patient[sel]], dtype=torch.int64),
        number=torch.from_numpy(slices.number[sel]),
        patients=tuple(names),
    )


def make_dataset(slices: SliceSet, config: TrainConfig) -> Dataset:
    """Split `slices` by patient as `config` says and build the parts."""
    if slices.image_size != config.image_size:
        raise DataError(f"slices are {slices.image_size} px but image_size={config.image_size}")
    split = split_patients(
        slices.patients, config.val_fraction, config.test_fraction, config.split_seed
    )
    return Dataset(
        train=make_part(slices, split.train, config.channels),
        val=make_part(slices, split.val, config.channels),
        test=make_part(slices, split.test, config.channels) if split.test else None,
        split=split,
        fingerprint=slices.fingerprint,
        image_size=config.image_size,
        channels=config.channels,
    )


def load_dataset(
    root: str | os.PathLike, config: TrainConfig, cache: Path | None = None
) -> Dataset:
    """`load_slices` then `make_dataset`: the usual way in from a folder."""
    return make_dataset(load_slices(root, config.image_size, cache), config)
