"""Every search in experiments/ trains: its first trials as the study would sample them (a
grid: every run) are built, and the first trains for one tiny epoch, in process. The full
machinery (Ray, ASHA, MLflow) runs once, in test_study_run.py."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from flairseg.engine import train
from study import search as searches


@pytest.mark.parametrize("name", searches.available())
def test_every_search_trains_its_first_trial(name: str, phantom_dir: Path) -> None:
    search = searches.load(name, "laptop", {"image_size": 32})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize")
    for point in search.optuna_points():
        study.enqueue_trial(point)
    configs = []
    for _ in range(len(search.grid) or min(3, search.trials)):
        trial = study.ask()  # the search's points first, then Optuna's samples
        configs.append(TrainConfig.from_dict(search(trial)["flairseg"]))  # validated, built
        study.tell(trial, 0.5)
    assert all(c.image_size == 32 for c in configs)
    first = configs[0].replace(epochs=1)
    result = train(first, load_dataset(phantom_dir, first))
    assert result.metrics["epoch"] == 1 and search.metric in result.metrics
    if search.grid:  # the seed's four runs: both models
        assert {c.model for c in configs} == {"unet", "setr"}
