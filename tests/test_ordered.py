"""Decisions in the trials' order, without Ray running: the referee against Ray's own ASHA
fed in order, the sampler's view, and how finalists are chosen (study.confirm)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random

import mlflow
import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler

from study import confirm, ordered
from study import search as searches
from study.referee import Referee, milestones
from study.schema import Tag
from study.searcher import tpe as _tpe

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _Stub:
    def __init__(self, number: int) -> None:
        self.trial_id = str(number)


def _in_order(values: dict[int, dict[int, float]], rungs: list[int]) -> dict:
    """Ray's ASHAScheduler fed every trial's rung values in trial order, rung by rung."""
    asha = ASHAScheduler(
        time_attr="epoch", metric="m", mode="max", max_t=8, grace_period=1, reduction_factor=2
    )
    for n in values:
        asha.on_trial_add(None, _Stub(n))
    out = {}
    for r in rungs:
        for n in sorted(values):
            if r in values[n]:
                action = asha.on_trial_result(None, _Stub(n), {"epoch": r, "m": values[n][r]})
                out[(n, r)] = action
    return out


def test_rungs_are_rays() -> None:
    asha = ASHAScheduler(time_attr="epoch", max_t=20, grace_period=3, reduction_factor=3)
    assert sorted(m for m, _ in asha._brackets[0]._rungs) == milestones(20, 3, 3) == [3, 9]
    assert milestones(8, 1, 2) == [1, 2, 4, 8]


def test_the_referee_decides_as_asha_in_trial_order_whatever_the_arrival_order() -> None:
    rng = random.Random(0)
    rungs = [1, 2, 4]
    values = {n: {r: rng.random() for r in rungs} for n in range(8)}
    expected = _in_order(values, rungs)

    async def play(order: list[tuple[int, int]]) -> dict:
        referee = Referee("m", "max", 8, 1, 2)
        for n in values:
            referee.register(n)
        asks = {(n, r): asyncio.ensure_future(referee.ask(n, r, values[n][r])) for n, r in order}
        await asyncio.sleep(0)
        return {k: (await v).upper() for k, v in asks.items()}

    forward = [(n, r) for r in rungs for n in range(8)]
    backward = list(reversed(forward))  # the last trial asks first: it must wait
    want = {k: ("STOP" if v == "STOP" else "GO") for k, v in expected.items()}
    assert asyncio.run(play(forward)) == want
    assert asyncio.run(play(backward)) == want


def test_a_trial_that_ended_early_releases_the_trials_after_it() -> None:
    async def play() -> str:
        referee = Referee("m", "max", 8, 1, 2)
        for n in (0, 1):
            referee.register(n)
        waiting = asyncio.ensure_future(referee.ask(1, 2, 0.5))
        await asyncio.sleep(0)
        assert not waiting.done()  # trial 0 may still reach epoch 2
        referee.ended(0, {1: 0.9})  # it failed after epoch 1
        return await waiting

    assert asyncio.run(play()) == "go"  # alone at epoch 2: nothing to stop it against


def _study(values: list[float | None]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0, 1)
    for i, v in enumerate(values):
        state = optuna.trial.TrialState.RUNNING if v is None else optuna.trial.TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": i / 10}, distributions={"x": dist}, value=v, state=state
            )
        )
    return study


def test_a_proposal_waits_for_the_trials_it_sees_and_sees_no_later_one() -> None:
    study = _study([0.1, 0.2, None, 0.4])  # trial 2 still running
    assert ordered.ready(study, 3, first=0, lag=2)  # sees trials 0 and 1: both ended
    assert not ordered.ready(study, 4, first=0, lag=2)  # would see trial 2: still running
    assert [t.number for t in ordered.visible(study, 4, first=0, lag=2)] == [0, 1]
    # an earlier invocation's trials (below `first`) are seen whole
    assert [t.number for t in ordered.visible(study, 4, first=4, lag=2)] == [0, 1, 3]
    assert ordered.next_number(study) == (4, False)


def test_the_same_view_gives_the_same_proposal() -> None:
    def propose(values: list[float | None]) -> dict:
        study = _study(values)
        make = functools.partial(_tpe, startup=2, conditional=True, liar=False)
        study.sampler = ordered.OrderedSampler(make, seed=7, first=0, lag=2)
        return study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).params

    # trial 5 sees 0..3: whether trial 4 has ended or not changes nothing
    assert propose([0.1, 0.5, 0.2, 0.3, None]) == propose([0.1, 0.5, 0.2, 0.3, 0.99])
    # and it is TPE's proposal, seeded for trial 5, from those four trials alone
    alone = _study([0.1, 0.5, 0.2, 0.3])
    alone.sampler = _tpe(ordered.trial_seed(7, 5), startup=2, conditional=True, liar=False)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    assert propose([0.1, 0.5, 0.2, 0.3, None]) == alone.ask(dist).params


CHOOSE = """
objective: {metric: val_iou, mode: max}
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space: {alpha: {uniform: [0.0, 1.0]}}
trials: 4
asha: {max_epochs: 9, grace_period: 3, reduction_factor: 3}
"""


def test_finalists_include_a_trial_cut_while_level_with_the_survivors(tmp_path) -> None:
    path = tmp_path / "choose.yaml"
    path.write_text(CHOOSE)
    search = searches.load(str(path))
    study = optuna.create_study(direction="maximize")
    dist = {"alpha": optuna.distributions.FloatDistribution(0, 1)}
    curves = {  # trial: objective per epoch; 0 and 1 went to epoch 9, 2 and 3 were cut at 3
        0: [0.1, 0.2, 0.50, 0.5, 0.5, 0.5, 0.5, 0.5, 0.70],
        1: [0.1, 0.2, 0.40, 0.4, 0.4, 0.4, 0.4, 0.4, 0.60],
        2: [0.1, 0.2, 0.45],  # level with the survivors at epoch 3
        3: [0.1, 0.1, 0.10],
    }
    for n, curve in curves.items():
        state = (
            optuna.trial.TrialState.COMPLETE if len(curve) == 9 else optuna.trial.TrialState.PRUNED
        )
        study.add_trial(
            optuna.trial.create_trial(
                params={"alpha": n / 10}, distributions=dist, value=curve[-1], state=state,
                intermediate_values={e + 1: v for e, v in enumerate(curve)},
            )
        )  # fmt: skip
    finalists = confirm.choose(study, search, 3)
    assert [f.trial for f in finalists] == [0, 2, 1]  # 2 ranks 2nd of 4 at epoch 3
    assert finalists[0].rung == 9 and finalists[0].standing == 1.0
    assert finalists[1].rung == 3 and finalists[1].standing == pytest.approx(0.75)
    assert all(f.config["epochs"] == 9 for f in finalists)  # retrained to the full budget

    # trials 0 and 1 ran their full budget; 1's checkpoint is not on this machine: only
    # 0's first seed keeps its search checkpoint, every other case trains
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("kept")
    ckpt = tmp_path / "trial-0000-x" / "checkpoint_000008"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"x")
    shown = {0: ("completed", "9", str(ckpt)), 1: ("completed", "9", str(tmp_path / "gone"))}
    shown[2] = ("stopped at epoch 3", "3", str(ckpt))
    for n, (status, epochs, where) in shown.items():
        tags = {Tag.OPTUNA_TRIAL: str(n), Tag.STATUS: status, Tag.EPOCHS: epochs}
        client.create_run(experiment, tags={**tags, Tag.CHECKPOINT: where})
    runs = client.search_runs([experiment])
    kept = confirm.kept_checkpoints(finalists, runs)
    assert kept == {0: str(ckpt)}
    made = confirm.cases(finalists, dataclasses.replace(search, confirm_seeds=2), kept)
    assert [(c["optuna_trial"], c["replica"], c.get("kept")) for c in made] == [
        (0, 0, str(ckpt)), (0, 1, None), (2, 0, None), (2, 1, None), (1, 0, None), (1, 1, None)
    ]  # fmt: skip
    assert [c["flairseg"]["seed"] - made[0]["flairseg"]["seed"] for c in made] == [0, 1] * 3
