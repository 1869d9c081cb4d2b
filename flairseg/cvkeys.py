"""How a cross-validated run names its scores (torch-free: the study and the report read them).

The usual key (`val_iou`) holds the mean over the K folds, `val_iou_std` their standard
deviation (the sample one, ddof 1), `fold1/val_iou` ... `foldK/val_iou` each fold's own.
On test, `test_iou` is the fold models' ensemble (mean probability) and
`test_iou_single` the mean of the K models scored one by one (`_single_std` its spread).
"""

from __future__ import annotations

import re

_FOLD = re.compile(r"^fold(?P<k>\d+)/(?P<key>.+)$")


def std_key(key: str) -> str:
    return f"{key}_std"


def fold_key(k: int, key: str) -> str:
    """Fold k's own value of `key`; k counts from 1 as the console and MLflow show it."""
    return f"fold{k}/{key}"


def single_key(key: str) -> str:
    return f"{key}_single"


def parse_fold_key(name: str) -> tuple[int, str] | None:
    """(k, key) of `fold3/val_iou`; None for any other name."""
    match = _FOLD.match(name)
    return (int(match["k"]), match["key"]) if match else None


def is_spread_key(name: str, keys: tuple[str, ...] | list[str]) -> bool:
    """Whether `name` is the spread or a fold's value of one of `keys`."""
    fold = parse_fold_key(name)
    if fold is not None:
        return fold[1] in keys
    return any(name == std_key(k) for k in keys)
