"""Quality against cost: a search's second objective, its trials' Pareto front, the answer.

A search file may name a cost beside its objective:

    cost: training_seconds                          # or, with the answer's rule:
    cost: {metric: training_seconds, tolerance: 0.01}

one of COSTS, each measured on every trial of every study (study.trainable, logged per
epoch by study.trial_runs): `model_epochs` (epochs times the models a trial trains: K when
cross-validated), `training_seconds` (the trial's wall time in Tune: its epochs, their
validation and checkpoints), `parameters` (one model's) and `inference_ms` (milliseconds
per slice of one model's forward pass, timed on the trial's device at its first epoch).

With a cost, Optuna's multi-objective TPE proposes: study.ordered's per-trial views hold
each ended trial as [objective, cost] (its Optuna user attribute `cost`); ASHA still stops
trials on the objective alone, and the study's record keeps the objective as its value. At
the end the study's front, Optuna's `best_trials` of its scored trials' (objective, cost)
(no other trial is as good on both and better on one), goes to the console, `--json`
(`front`), the parent run (`front.json`, tag `answer`) and the report; the study's answer,
scored on test and registered, is the cheapest trial of the front within `tolerance` of
the front's best objective (default 0.01), and the summary says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from flairseg.errors import ConfigError
from study import schema
from study.schema import Tag

COSTS = schema.COSTS
DEFAULT_TOLERANCE = 0.01
UNITS = {"model_epochs": "", "training_seconds": " s", "parameters": "", "inference_ms": " ms"}


@dataclass(frozen=True)
class Cost:
    metric: str
    tolerance: float = DEFAULT_TOLERANCE


def parse(value: Any, where: str) -> Cost | None:
    """A search file's `cost:` (None: the search has one objective)."""
    if value is None:
        return None
    raw = {"metric": value} if isinstance(value, str) else value
    if not isinstance(raw, Mapping) or set(raw) - {"metric", "tolerance"}:
        raise ConfigError(
            f"{where}: cost: one of {', '.join(COSTS)}, or {{metric: ..., tolerance: ...}}"
        )
    metric = raw.get("metric")
    if metric not in COSTS:
        raise ConfigError(f"{where}: cost.metric {str(metric)[:40]!r}: one of {', '.join(COSTS)}")
    tolerance = raw.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
        raise ConfigError(f"{where}: cost.tolerance {tolerance!r}: a number, at least 0")
    return Cost(metric, float(tolerance))


@dataclass(frozen=True)
class Point:
    """A scored trial of the study: its objective and cost at its last epoch."""

    trial: int
    run_id: str
    name: str
    objective: float
    cost: float
    epochs: int
    model: str


def points(trial_runs: list, objective: str, cost: str) -> list[Point]:
    """The study's trials with a finite objective and cost (completed or stopped)."""
    out = []
    for run in trial_runs:
        tags, metrics = run.data.tags, run.data.metrics
        value, spent = metrics.get(objective), metrics.get(cost)
        if not schema.is_scored(tags.get(Tag.STATUS, "")) or value is None or spent is None:
            continue
        if not (math.isfinite(value) and math.isfinite(spent)):
            continue
        epochs = int(tags.get(Tag.EPOCHS, tags.get(Tag.EPOCHS_LOGGED, 0)) or 0)
        number = int(tags.get(Tag.OPTUNA_TRIAL, -1))
        out.append(
            Point(number, run.info.run_id, run.info.run_name, value, spent, epochs,
                  tags.get(Tag.MODEL, "?"))
        )  # fmt: skip
    return sorted(out, key=lambda p: p.trial)


def pareto(found: list[Point], mode: str) -> list[Point]:
    """Optuna's Pareto front (`Study.best_trials`) of the points, cheapest first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if mode == "max" else "minimize"
    study = optuna.create_study(directions=[direction, "minimize"])
    study.add_trials(
        [
            optuna.trial.create_trial(values=[p.objective, p.cost], user_attrs={"i": i})
            for i, p in enumerate(found)
        ]
    )
    best = [found[t.user_attrs["i"]] for t in study.best_trials]
    return sorted(best, key=lambda p: (p.cost, p.trial))


def answer(front: list[Point], mode: str, tolerance: float) -> tuple[Point, Point]:
    """(the answer, the front's best objective): the cheapest within `tolerance` of it."""
    sign = 1.0 if mode == "max" else -1.0
    best = max(front, key=lambda p: (sign * p.objective, -p.cost))
    near = [p for p in front if sign * (best.objective - p.objective) <= tolerance + 1e-12]
    return min(near, key=lambda p: (p.cost, p.trial)), best


def record(trial_runs: list, objective: str, mode: str, cost: Cost) -> dict[str, Any] | None:
    """The front, the answer and its rule, for the summary and the parent run (None: no
    trial has both values)."""
    found = points(trial_runs, objective, cost.metric)
    if not found:
        return None
    front = pareto(found, mode)
    chosen, best = answer(front, mode, cost.tolerance)
    rule = (
        f"the cheapest trial of the front within {cost.tolerance:g} {objective} of its best "
        f"(#{best.trial}, {objective} {best.objective:.4f})"
    )
    return {
        "objective": objective,
        "mode": mode,
        "cost": cost.metric,
        "tolerance": cost.tolerance,
        "trials": len(found),
        "front": [asdict(p) for p in front],
        "points": [asdict(p) for p in found],
        "answer": chosen.trial,
        "best": best.trial,
        "rule": rule,
    }


def lines(made: Mapping[str, Any]) -> list[str]:
    """The console's lines: the front, cheapest first, and the answer with its rule."""
    unit, metric = UNITS[made["cost"]], made["objective"]
    shown = [
        f"#{p['trial']} {metric} {p['objective']:.4f} at {_amount(p['cost'])}{unit}"
        for p in made["front"]
    ]
    chosen = next(p for p in made["front"] if p["trial"] == made["answer"])
    return [
        f"quality against {made['cost']}: {len(made['front'])} of {made['trials']} trials on "
        f"the front: " + "; ".join(shown),
        f"the answer: trial #{chosen['trial']} ({metric} {chosen['objective']:.4f}, "
        f"{_amount(chosen['cost'])}{unit}), {made['rule']}",
    ]


def _amount(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
