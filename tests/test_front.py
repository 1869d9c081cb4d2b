"""study.front: the search file's cost, the Pareto front (checked against a front recomputed
here by its definition) and the answer's rule."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from flairseg.errors import ConfigError
from study import front
from study.schema import Tag


def a_run(number: int, objective: float | None, cost: float | None, status: str = "completed"):
    metrics = {
        k: v for k, v in (("val_iou", objective), ("training_seconds", cost)) if v is not None
    }
    tags = {Tag.STATUS: status, Tag.OPTUNA_TRIAL: str(number), Tag.EPOCHS: "3", Tag.MODEL: "unet"}
    return SimpleNamespace(
        data=SimpleNamespace(tags=tags, metrics=metrics),
        info=SimpleNamespace(run_id=f"r{number}", run_name=f"#{number}"),
    )


def by_definition(points: list[front.Point], mode: str) -> set[int]:
    """The trials no other trial dominates (as good on both, better on one)."""
    sign = 1.0 if mode == "max" else -1.0

    def dominates(a: front.Point, b: front.Point) -> bool:
        no_worse = sign * a.objective >= sign * b.objective and a.cost <= b.cost
        better = sign * a.objective > sign * b.objective or a.cost < b.cost
        return no_worse and better

    return {p.trial for p in points if not any(dominates(q, p) for q in points if q is not p)}


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("seed", range(5))
def test_the_front_is_the_trials_no_other_dominates(mode: str, seed: int) -> None:
    rng = random.Random(seed)
    runs = [a_run(n, round(rng.random(), 2), round(rng.uniform(1, 50), 1)) for n in range(40)]
    found = front.points(runs, "val_iou", "training_seconds")
    made = front.pareto(found, mode)
    assert {p.trial for p in made} == by_definition(found, mode)
    assert [p.cost for p in made] == sorted(p.cost for p in made)


def test_only_scored_trials_with_both_values_count() -> None:
    runs = [
        a_run(0, 0.8, 10.0),
        a_run(1, 0.9, 20.0, status="stopped at epoch 3"),
        a_run(2, 0.95, 5.0, status="failed"),
        a_run(3, None, 1.0),
        a_run(4, 0.7, float("nan")),
    ]
    assert [p.trial for p in front.points(runs, "val_iou", "training_seconds")] == [0, 1]


def test_the_answer_is_the_cheapest_within_the_tolerance_of_the_best() -> None:
    runs = [a_run(0, 0.80, 100.0), a_run(1, 0.795, 40.0), a_run(2, 0.70, 10.0)]
    made = front.record(runs, "val_iou", "max", front.Cost("training_seconds", 0.01))
    assert made["best"] == 0 and made["answer"] == 1
    assert "within 0.01 val_iou of its best (#0, val_iou 0.8000)" in made["rule"]
    strict = front.record(runs, "val_iou", "max", front.Cost("training_seconds", 0.0))
    assert strict["answer"] == 0
    lines = front.lines(made)
    assert lines[0].startswith("quality against training_seconds: 3 of 3 trials on the front")
    assert lines[1].startswith("the answer: trial #1 (val_iou 0.7950, 40 s)")
    low = front.record(runs, "val_iou", "min", front.Cost("training_seconds", 0.2))
    assert low["best"] == 2 and low["answer"] == 2  # the lowest loss is also the cheapest


def test_ties_go_to_the_cheaper_then_the_earlier_trial() -> None:
    runs = [a_run(n, 0.8, c) for n, c in zip(range(4), (30.0, 20.0, 20.0, 50.0), strict=True)]
    made = front.record(runs, "val_iou", "max", front.Cost("training_seconds"))
    assert made["answer"] == 1 and made["best"] == 1


@pytest.mark.parametrize(
    ("value", "culprit"),
    [
        ("seconds", "cost.metric 'seconds'"),
        ({"metric": "parameters", "tolerance": -1}, "cost.tolerance -1"),
        ({"metric": "parameters", "extra": 1}, "cost: one of"),
        (3, "cost: one of"),
    ],
)
def test_a_bad_cost_is_refused_naming_it(value: object, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit):
        front.parse(value, "f.yaml")


def test_every_cost_and_its_short_form_is_read() -> None:
    for metric, tolerance in itertools.product(front.COSTS, (0.0, 0.05)):
        assert front.parse({"metric": metric, "tolerance": tolerance}, "f") == front.Cost(
            metric, tolerance
        )
    assert front.parse("parameters", "f") == front.Cost("parameters", front.DEFAULT_TOLERANCE)
    assert front.parse(None, "f") is None


def test_optuna_proposes_from_a_two_objective_view_of_the_trials() -> None:
    """With a cost, each proposal's view holds the ended trials as [objective, cost]; one
    without a cost is left out; the multi-objective TPE samples in it."""
    import optuna

    from study.ordered import COST_ATTR, OrderedSampler
    from study.searcher import tpe

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for n in range(6):
        study.add_trial(
            optuna.trial.create_trial(
                value=0.5 + n / 20, params={"lr": 1e-3 * (n + 1)}, distributions=dist,
                user_attrs={COST_ATTR: 10.0 * (n + 1)} if n != 2 else {},
            )
        )  # fmt: skip
    sampler = OrderedSampler(
        lambda seed: tpe(seed, startup=2, conditional=False, liar=False),
        seed=0, first=0, lag=2, cost="training_seconds", waits=False,
    )  # fmt: skip
    trial = study.ask()
    inner, view = sampler._for(study, trial)
    assert len(view.directions) == 2 and view.directions[1] == optuna.study.StudyDirection.MINIMIZE
    assert sorted(t.values[1] for t in view.trials) == [10.0, 20.0, 40.0, 50.0, 60.0]
    value = sampler.sample_independent(study, trial, "lr", dist["lr"])
    assert 1e-4 <= value <= 1e-2
