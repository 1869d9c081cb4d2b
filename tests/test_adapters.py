"""The private attributes of Optuna and Ray Tune that study/adapters.py relies on still exist.

An upgrade that moves one must fail here, by name, not break resume silently.
"""

from __future__ import annotations

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from study import adapters


def test_optuna_search_still_holds_its_trials_and_study() -> None:
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    searcher = OptunaSearch(space=space, metric="m", mode="max", seed=0)
    assert searcher.suggest("t1") is not None
    trials = adapters.searcher_trials(searcher)
    study = adapters.searcher_study(searcher)
    assert isinstance(study, optuna.Study) and set(trials) == {"t1"}
    assert isinstance(trials["t1"], optuna.trial.Trial)
    assert adapters.searcher_completed(searcher) == set()
    searcher.on_trial_complete("t1", result={"m": 0.5})
    assert adapters.searcher_completed(searcher) == {"t1"}


def test_a_running_trial_is_reached_by_its_storage_id() -> None:
    study = optuna.create_study()
    study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    assert isinstance(adapters.trial_id(frozen), int)
    adapters.running_trial(study, frozen).set_user_attr("status", "killed")
    assert study.get_trials()[0].user_attrs == {"status": "killed"}


def test_a_moved_attribute_fails_by_name() -> None:
    with pytest.raises(adapters.LibraryChanged, match="_ot_trials"):
        adapters.searcher_trials(object())
    with pytest.raises(adapters.LibraryChanged, match="_completed_trials"):
        adapters.searcher_completed(object())
