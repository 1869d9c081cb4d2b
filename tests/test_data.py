"""Phantom, loader, cache, split and augmentation on real TIFF files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import flairseg.data
from flairseg.augment import augment
from flairseg.config import TrainConfig
from flairseg.data import load_slices
from flairseg.dataset import load_dataset, split_patients
from flairseg.errors import DataError
from flairseg.phantom import PhantomSpec, write_phantom


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_phantom_same_seed_same_bytes(tmp_path: Path) -> None:
    spec = PhantomSpec(2, 4, 32, seed=7)
    a = write_phantom(tmp_path / "a", spec)
    b = write_phantom(tmp_path / "b", spec)
    c = write_phantom(tmp_path / "c", PhantomSpec(2, 4, 32, seed=8))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_phantom_layout_and_lesions(phantom_dir: Path) -> None:
    patients = sorted(p for p in phantom_dir.iterdir() if p.is_dir())
    assert len(patients) == 12
    assert (phantom_dir / "data.csv").is_file() and (phantom_dir / "README.md").is_file()
    name = patients[0].name
    image = Image.open(patients[0] / f"{name}_1.tif")
    mask = Image.open(patients[0] / f"{name}_1_mask.tif")
    assert (image.format, image.mode, image.size) == ("TIFF", "RGB", (64, 64))
    assert (mask.format, mask.mode) == ("TIFF", "L")
    masks = np.stack([np.asarray(Image.open(f)) for f in sorted(phantom_dir.rglob("*_mask.tif"))])
    assert set(np.unique(masks)) <= {0, 255}
    per_slice = (masks > 0).mean(axis=(1, 2))
    assert 0.01 <= (masks > 0).mean() <= 0.03  # like the real set's 1.3 %
    assert 0.2 < (per_slice > 0).mean() < 0.8  # lesions on some slices, empty masks on others


def test_phantom_refuses_a_used_folder(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not an empty folder"):
        write_phantom(tmp_path / "used", PhantomSpec(1, 1, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]


def test_loader_reads_phantom(phantom_dir: Path, tmp_path: Path) -> None:
    slices = load_slices(phantom_dir, 32, cache=tmp_path)
    assert len(slices.patients) == 12 and len(slices) == 144
    assert slices.images.shape == (144, 32, 32, 3) and slices.images.dtype == np.uint8
    assert slices.masks.shape == (144, 32, 32) and set(np.unique(slices.masks)) <= {0, 1}
    first = slices.patient == 0
    assert slices.number[first].tolist() == list(
        range(1, 13)
    )  # numeric order, not 1, 10, 11, 12, 2
    assert slices.masks.any()


def test_cache_second_load_reads_no_tiff(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_slices(tiny_phantom, 32, cache=tmp_path)

    def no_decoding(path: Path) -> None:
        raise DataError(f"{path}: decoded although cached")

    monkeypatch.setattr(flairseg.data, "_decode_tiff", no_decoding)
    second = load_slices(tiny_phantom, 32, cache=tmp_path)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.masks, second.masks)
    assert first.fingerprint == second.fingerprint and first.content == second.content
    with pytest.raises(DataError, match="decoded although cached"):
        load_slices(tiny_phantom, 16, cache=tmp_path)  # another size is another cache entry


def test_cache_key_follows_files(tiny_phantom: Path, tmp_path: Path) -> None:
    before = load_slices(tiny_phantom, 32, cache=tmp_path).fingerprint
    victim = next(tiny_phantom.glob("*/*_2.tif"))
    victim.unlink()
    victim.with_name(victim.stem + "_mask.tif").unlink()
    assert load_slices(tiny_phantom, 32, cache=tmp_path).fingerprint != before


def test_split_by_patient_is_disjoint_and_seeded() -> None:
    patients = [f"P{i:02d}" for i in range(20)]
    a = split_patients(patients, 0.2, 0.2, seed=1)
    assert len(a.train) == 12 and len(a.val) == 4 and len(a.test) == 4
    assert not (set(a.train) & set(a.val) or set(a.train) & set(a.test) or set(a.val) & set(a.test))
    assert set(a.train) | set(a.val) | set(a.test) == set(patients)
    assert (
        split_patients(list(reversed(patients)), 0.2, 0.2, seed=1) == a
    )  # order of discovery is irrelevant
    assert split_patients(patients, 0.2, 0.2, seed=2) != a
    no_test = split_patients(patients[:8], 0.25, 0.0, seed=0)
    assert (len(no_test.train), len(no_test.val), len(no_test.test)) == (6, 2, 0)


def test_split_that_leaves_a_part_empty() -> None:
    with pytest.raises(DataError, match="split leaves a part empty: 2 patients"):
        split_patients(["A", "B"], 0.2, 0.2, seed=0)


def test_dataset_parts_slices_never_shared(phantom_dir: Path, tmp_path: Path) -> None:
    data = load_dataset(phantom_dir, TrainConfig(image_size=32), cache=tmp_path)
    assert len(data.train) + len(data.val) + len(data.test) == 144
    names = [set(part.patients) for part in (data.train, data.val, data.test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    # per-volume standardisation: each train patient's volume has mean 0, std 1 per channel
    x, _ = data.train.batch(torch.nonzero(data.train.patient == 0)[:, 0])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_flair_only_channel(phantom_dir: Path, tmp_path: Path) -> None:
    rgb = load_dataset(phantom_dir, TrainConfig(image_size=32), cache=tmp_path)
    flair = load_dataset(phantom_dir, TrainConfig(image_size=32, channels=1), cache=tmp_path)
    assert flair.train.images.shape[1] == 1
    assert torch.equal(flair.train.images[:, 0], rgb.train.images[:, 1])


def test_augment_keeps_masks_binary_and_is_seeded() -> None:
    x = torch.randn(4, 3, 32, 32)
    y = (torch.rand(4, 1, 32, 32) > 0.8).float()
    a = augment(x, y, torch.Generator().manual_seed(0))
    b = augment(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == x.shape and a[1].shape == y.shape
    assert set(a[1].unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a[0], x)


def test_loader_reads_real_sample_like_phantom(lgg_sample: Path, tmp_path: Path) -> None:
    slices = load_slices(lgg_sample, 64, cache=tmp_path)
    assert len(slices.patients) == 8 and all(p.startswith("TCGA_") for p in slices.patients)
    assert len(slices) == 177  # data.csv and README.md beside the patients are ignored
    assert slices.images.shape == (177, 64, 64, 3)
    assert int(slices.masks.reshape(177, -1).any(1).sum()) == 66
    assert 0.008 < slices.masks.mean() < 0.02
    data = load_dataset(
        lgg_sample, TrainConfig(image_size=64, val_fraction=0.25, test_fraction=0), cache=tmp_path
    )
    assert (len(data.split.train), len(data.split.val), len(data.split.test)) == (6, 2, 0)
