"""The training region evolution: fixed slices, one probability map per epoch, strips to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from flairseg.evolution import Evolution, pick_slices


def test_pick_slices_prefers_large_lesions_one_per_patient(phantom_dir: Path) -> None:
    data = load_dataset(phantom_dir, TrainConfig(image_size=32))
    part = data.val
    index = pick_slices(part, 4)
    assert len(index) == len(set(index)) == min(4, len(part))
    area = part.masks.flatten(1).sum(1)
    patients = [int(part.patient[i]) for i in index[: len(part.patients)]]
    assert len(set(patients)) == len(patients)  # one per patient first
    best = int(area.argmax())
    assert best in index
    assert all(area[i] > 0 for i in index[: len(part.patients)])


def test_evolution_round_trip_and_strip(phantom_dir: Path, tmp_path: Path) -> None:
    data = load_dataset(phantom_dir, TrainConfig(image_size=32))
    index = pick_slices(data.val, 3)
    evo = Evolution.of(data.val, index)
    for epoch in range(1, 12):
        evo.add(epoch, torch.full((3, 1, 32, 32), epoch / 11))
    evo.add(11, torch.ones(3, 1, 32, 32))  # a repeated epoch replaces the frame
    path = evo.save(tmp_path / "evo.npz")
    back = Evolution.load(path)
    assert back.epochs == list(range(1, 12)) and back.names == evo.names
    assert np.array_equal(np.stack(back.probs), np.stack(evo.probs))
    assert int(back.probs[-1].min()) == 255
    strip = back.strip(0, columns=8)
    assert strip.size == ((2 + 8) * 32, 32 + 12)
    assert Evolution.load(path.read_bytes()).epochs == back.epochs
