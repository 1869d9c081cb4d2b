"""The data a run trained on, as MLflow knows data sets: its inputs in the MLflow UI.

Each trial run and each parent run logs the study's data as dataset inputs, one per part
of the split: `NAME:train` (context training), `NAME:val` (validation) and `NAME:test`
(test), or for a cross-validated study `NAME:folds` (the patients the folds are dealt
from: training) and `NAME:test`. Every one has the data set's fingerprint as its digest
(MLflow keeps 36 characters of it), the data folder as its source, and the part's patients
and slices as its profile, so the UI's Dataset column and filter show which data a run
saw. The specs are plain dicts: the trial logger journals them while MLflow is away.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flairseg.dataset import Dataset

CONTEXT = "mlflow.data.context"  # MLflow's input tag for the part a data set played
DIGEST_LENGTH = 36  # MLflow's column for a dataset digest


def specs(data_dir: Path, data: Dataset, folds: int | None = None) -> list[dict[str, Any]]:
    """One spec per part of the split: name, digest, source, context, profile."""
    name = data_dir.name if data_dir.name != "kaggle_3m" else f"{data_dir.parent.name}/kaggle_3m"
    parts: list[tuple[str, str, Any]] = (
        [("folds", "training", (data.train, data.val))]
        if folds
        else [("train", "training", (data.train,)), ("val", "validation", (data.val,))]
    )
    if data.test is not None:
        parts.append(("test", "test", (data.test,)))
    out = []
    for part, context, pieces in parts:
        profile = {
            "patients": sum(len(p.patients) for p in pieces),
            "slices": sum(len(p.images) for p in pieces),
            "image_size": data.image_size,
            "channels": data.channels,
        }
        out.append({
            "name": f"{name}:{part}", "digest": data.fingerprint[:DIGEST_LENGTH],
            "source": str(data_dir), "context": context, "profile": profile,
        })  # fmt: skip
    return out


def entities(found: list[dict[str, Any]]) -> list[Any]:
    """MLflow DatasetInputs of the specs."""
    from mlflow.entities import Dataset as MlflowDataset
    from mlflow.entities import DatasetInput, InputTag

    return [
        DatasetInput(
            MlflowDataset(
                name=s["name"],
                digest=s["digest"],
                source_type="local",
                source=json.dumps({"uri": s["source"]}),
                profile=json.dumps(s["profile"]),
            ),
            tags=[InputTag(CONTEXT, s["context"])],
        )
        for s in found
    ]


def log(c: Any, run_id: str, found: list[dict[str, Any]]) -> None:
    """The specs as the run's dataset inputs (MLflow skips one the run already has)."""
    if found:
        c.log_inputs(run_id, datasets=entities(found))
