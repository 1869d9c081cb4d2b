"""Every access to a private attribute of Optuna or Ray Tune, in one place.

Resume, close-out and the trial states need a few things neither library offers publicly:
the trials Ray's OptunaSearch holds, the ones it has already told Optuna the end of, the
Optuna study behind it, and an Optuna trial's storage id (to reach a RUNNING trial that
Study can only `ask` anew). An upgrade that moves any of them must fail loudly here (and in
tests/test_adapters.py), not let resume go wrong silently.
"""

from __future__ import annotations

from typing import Any


class LibraryChanged(RuntimeError):
    """A private attribute this project relies on is gone: pin the old version or adapt."""


def _get(obj: Any, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise LibraryChanged(
            f"{type(obj).__module__}.{type(obj).__name__} has no {name} ({what}); "
            "the installed version changed it: see study/adapters.py"
        ) from None


def searcher_trials(searcher: Any) -> dict[str, Any]:
    """OptunaSearch's map of Tune trial id -> Optuna trial (`_ot_trials`, no public API)."""
    return _get(searcher, "_ot_trials", "Tune trial id -> Optuna trial")


def searcher_completed(searcher: Any) -> set[str]:
    """The Tune trial ids OptunaSearch has already told Optuna the end of
    (`_completed_trials`, no public API)."""
    return _get(searcher, "_completed_trials", "the Tune trial ids already told")


def searcher_study(searcher: Any) -> Any:
    """The optuna.Study OptunaSearch asks (`_ot_study`, no public API)."""
    return _get(searcher, "_ot_study", "the Optuna study")


def trial_id(frozen: Any) -> int:
    """An Optuna FrozenTrial's storage id (`_trial_id`): what `optuna.trial.Trial(study,
    id)` and the storage take; the public `number` is per study, not per storage."""
    return _get(frozen, "_trial_id", "the trial's storage id")


def running_trial(study: Any, frozen: Any) -> Any:
    """A live `optuna.trial.Trial` for an existing RUNNING trial (Study can only `ask` anew)."""
    import optuna

    return optuna.trial.Trial(study, trial_id(frozen))
