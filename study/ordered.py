"""Optuna's proposals in a fixed order: trial n is proposed from a view that timing cannot change.

TPE reads every finished trial of the study when it proposes, so with two trials at a
time what it proposed depended on which trial happened to end first. Here trial n sees
the study's earlier invocations whole and, of its own invocation, the trials numbered at
most n - c (c: the trials that run at once), all of them ended: the c - 1 trials before n
may still be running when n starts, so none of them is ever seen. When one of the trials
n may see is still running, the proposal waits (`ready` says so and the searcher answers
Tune "not yet"). Each proposal uses a sampler of its own, seeded from the study's seed and
n, so the random draws do not depend on how many proposals came before in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
DONE = (*FINISHED, optuna.trial.TrialState.FAIL)


def next_number(study: Any) -> tuple[int, bool]:
    """The number Optuna's next `ask` gives, and whether it is an enqueued point (whose
    parameters are fixed, so its proposal needs no view)."""
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if waiting:
        return min(t.number for t in waiting), True
    return len(study.get_trials(deepcopy=False)), False


def ready(study: Any, number: int, first: int, lag: int) -> bool:
    """Whether every trial trial `number` sees (this invocation's from `first` up to
    number - lag) has ended."""
    last = number - lag
    return all(
        t.state in DONE for t in study.get_trials(deepcopy=False) if first <= t.number <= last
    )


def visible(study: Any, number: int, first: int, lag: int) -> list[Any]:
    """The finished trials trial `number` is proposed from, in number order."""
    return [
        t
        for t in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)
        if t.number < first or t.number <= number - lag
    ]


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number`: a function of the study's seed and n only."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def with_cost(trials: list[Any], cost: str) -> list[Any]:
    """The trials as a two-objective study holds them: [objective, cost] (the cost the
    searcher kept in the user attribute `cost`), COMPLETE, ASHA-stopped ones with their last
    value; a trial without both is left out."""
    from study.importance import value_of

    out = []
    for t in trials:
        value, spent = value_of(t), t.user_attrs.get(COST_ATTR)
        if value is None or not isinstance(spent, int | float) or not np.isfinite(spent):
            continue
        out.append(
            optuna.trial.create_trial(
                values=[value, float(spent)],
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
            )
        )
    return out


COST_ATTR = "cost"  # an ended trial's cost (study.front), kept by the searcher


class OrderedSampler(BaseSampler):
    """Delegates to a fresh sampler per trial (`make(seed)`) that sees only `visible`. With
    a `cost` (study.front), the view has two objectives, the study's and the cost
    (minimised), and the sampler proposes for both (Optuna's multi-objective TPE). `waits`
    False: every trial sees all that ended before it (decisions as results arrive)."""

    cost: str | None = None  # defaults for a sampler pickled before these existed
    waits: bool = True

    def __init__(
        self,
        make: Callable[[int], BaseSampler],
        seed: int,
        first: int,
        lag: int,
        fixed_only: bool = False,
        cost: str | None = None,
        waits: bool = True,
    ) -> None:
        self._make = make
        self.cost = cost
        self.waits = waits
        self.fixed_only = fixed_only  # a grid: every trial's parameters are fixed, none waits
        self._seed = seed
        self.first = first
        self.lag = lag
        self._number: int | None = None
        self._inner: BaseSampler | None = None
        self._view: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # Tune pickles its searcher; the view is rebuilt
        state.update(_number=None, _inner=None, _view=None)
        return state

    def _for(self, study: Any, trial: Any) -> tuple[BaseSampler, Any]:
        if self._number != trial.number:
            lag = self.lag if self.waits else 1  # not waiting: all that ended before it
            seen = visible(study, trial.number, self.first, lag)
            directions = study.directions
            if self.cost is not None:
                directions = [*directions, optuna.study.StudyDirection.MINIMIZE]
                seen = with_cost(seen, self.cost)
            view = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(), directions=directions
            )
            view.add_trials(seen)
            self._view = view
            self._inner = self._make(trial_seed(self._seed, trial.number))
            self._number = trial.number
        return self._inner, self._view

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        inner, view = self._for(study, trial)
        return inner.infer_relative_search_space(view, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict:
        inner, view = self._for(study, trial)
        return inner.sample_relative(view, trial, search_space)

    def sample_independent(
        self, study: Any, trial: Any, param_name: str, param_distribution: Any
    ) -> Any:
        inner, view = self._for(study, trial)
        return inner.sample_independent(view, trial, param_name, param_distribution)
