"""Patient k-fold cross-validation splits: the same config trained on K folds of patients.

The test patients are held out exactly as a single-split run holds them out (chosen by
`split_seed`, see `dataset.split_patients`); the other patients, train and val alike,
are dealt into K folds by a permutation seeded from `split_seed` too, so the same seed
gives the same folds. Fold k's model trains on the other K-1 folds and is scored on
fold k; every non-test patient is in exactly one fold's val.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flairseg.dataset import Dataset, Part, Split
from flairseg.errors import ConfigError


@dataclass(frozen=True)
class Folds:
    """The val patients of each fold (sorted) and the test patients they all hold out."""

    val: tuple[tuple[str, ...], ...]
    test: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.val)

    def split(self, k: int) -> Split:
        """Fold k's split (k from 0): its val, the other folds as train, the shared test."""
        train = sorted(p for j, names in enumerate(self.val) if j != k for p in names)
        return Split(train=tuple(train), val=self.val[k], test=self.test)

    def to_dict(self) -> dict[str, list]:
        return {"folds": [list(v) for v in self.val], "test": list(self.test)}


def check_folds(folds: int, patients: int, where: str = "--folds") -> None:
    """K must be at least 2 and at most the non-test patients; fails naming both."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"{where} {folds}: must be a whole number, at least 2")
    if folds > patients:
        raise ConfigError(
            f"{where} {folds}: only {patients} patients are left besides the test patients; "
            f"each fold needs at least one (give at most {patients})"
        )


def assign_folds(
    patients: tuple[str, ...] | list[str], folds: int, seed: int
) -> list[tuple[str, ...]]:
    """Deal `patients` into `folds` folds by a permutation seeded from `seed` (sizes differ
    by at most one); each fold sorted. The input order does not matter."""
    names = sorted(patients)
    check_folds(folds, len(names))
    # its own stream: (seed, 1) is not the permutation that chose the test patients
    order = np.random.default_rng((seed, 1)).permutation(len(names))
    return [tuple(sorted(names[i] for i in order[k::folds])) for k in range(folds)]


def make_folds(data: Dataset, folds: int, seed: int) -> tuple[Folds, list[Dataset]]:
    """K datasets from a single-split one: its train and val patients dealt into folds,
    its test part shared by all (the same Part object: shipped once, scored alike)."""
    pool = concat(data.train, data.val)
    fold_val = assign_folds(pool.patients, folds, seed)
    plan = Folds(val=tuple(fold_val), test=data.split.test)
    datasets = []
    for k in range(folds):
        split = plan.split(k)
        datasets.append(
            Dataset(
                train=subset(pool, split.train),
                val=subset(pool, split.val),
                test=data.test,
                split=split,
                fingerprint=data.fingerprint,
                image_size=data.image_size,
                channels=data.channels,
            )
        )
    return plan, datasets


def split_of(data: Dataset, folds: int | None, seed: int) -> dict[str, list[str]]:
    """The patients a run uses, `{part: [names]}`: train, val and test of the single
    split, or `fold 1` ... `fold K` and test when it is cross-validated."""
    if not folds:
        return data.split.to_dict()
    dealt = assign_folds(data.split.train + data.split.val, folds, seed)
    return {f"fold {k}": list(v) for k, v in enumerate(dealt, start=1)} | {
        "test": list(data.split.test)
    }


def concat(a: Part, b: Part) -> Part:
    """The slices of two parts with disjoint patients, as one part."""
    if set(a.patients) & set(b.patients):
        raise ValueError("concat: the parts share patients")
    return Part(
        images=torch.cat([a.images, b.images]),
        masks=torch.cat([a.masks, b.masks]),
        mean=torch.cat([a.mean, b.mean]),
        std=torch.cat([a.std, b.std]),
        patient=torch.cat([a.patient, b.patient + len(a.patients)]),
        number=torch.cat([a.number, b.number]),
        patients=a.patients + b.patients,
    )


def subset(part: Part, names: tuple[str, ...]) -> Part:
    """The slices of `names` (patients of `part`), renumbered 0.. in the order of `names`.

    Each slice keeps its own volume statistics: they are its patient's, whatever the split.
    """
    wanted = [part.patients.index(n) for n in names]
    sel = torch.isin(part.patient, torch.tensor(wanted, dtype=part.patient.dtype))
    remap = torch.full((len(part.patients),), -1, dtype=torch.int64)
    remap[wanted] = torch.arange(len(wanted))
    return Part(
        images=part.images[sel],
        masks=part.masks[sel],
        mean=part.mean[sel],
        std=part.std[sel],
        patient=remap[part.patient[sel]],
        number=part.number[sel],
        patients=tuple(names),
    )
