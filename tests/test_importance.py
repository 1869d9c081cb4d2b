"""What mattered (study.importance): real Optuna studies built trial by trial, real MLflow
SQLite stores, and the report's section drawn from what the parent run holds. No Ray."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from study_helpers import mlflow_template

from dashboards.importance import NOT_COMPUTED, fig_importance
from dashboards.load import Mattered, StudyData, load
from dashboards.page import FIGURES, build
from study import importance, schema
from study.schema import Artifact, Param, Role, Tag

optuna.logging.set_verbosity(optuna.logging.WARNING)

FLOATS = {name: FloatDistribution(0.0, 1.0) for name in ("driver", "noise", "budget")}
SEARCH = SimpleNamespace(metric="val_iou", mode="max", grid=[])
MAX_EPOCHS = 10


def epochs_for(budget: float) -> int:
    return 1 + round(budget * (MAX_EPOCHS - 1))


def synthetic(n: int = 24, pruned_every: int = 0, seed: int = 1) -> optuna.Study:
    """`driver` sets the objective, `budget` the epochs a trial reaches, `noise` nothing.

    Each trial reports its objective every epoch (step = epoch), as study.searcher does;
    with `pruned_every` k, every k-th trial is PRUNED with no value of its own, as Ray's
    searcher leaves a trial ASHA stopped when told without one."""
    rng = random.Random(seed)
    study = optuna.create_study(direction="maximize")
    for i in range(n):
        params = {name: rng.random() for name in FLOATS}
        epochs = epochs_for(params["budget"])
        curve = {e: params["driver"] * e / epochs for e in range(1, epochs + 1)}
        pruned = pruned_every and i % pruned_every == 0
        study.add_trial(
            create_trial(
                params=params,
                distributions=FLOATS,
                value=None if pruned else params["driver"],
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                intermediate_values=curve,
            )
        )
    return study


def test_the_driver_ranks_first_and_the_budget_drives_the_cost() -> None:
    found = importance.what_mattered(synthetic(), SEARCH)
    objective, cost = found["objective"]["ranking"], found["cost"]["ranking"]
    assert list(objective)[0] == "driver" and objective["driver"] > 0.8, objective
    assert list(cost)[0] == "budget" and cost["budget"] > 0.8, cost
    assert sum(objective.values()) == pytest.approx(1, abs=1e-3)
    assert found["trials"] == 24 and found["unranked"] == {}
    assert found["objective"]["target"] == "val_iou" and found["cost"]["target"] == "epochs"
    assert importance.what_mattered(synthetic(), SEARCH) == found  # seeded: deterministic
    metrics = importance.metrics(found)
    assert set(metrics) == {f"importance.{k}" for k in FLOATS} | {
        f"cost_importance.{k}" for k in FLOATS
    }
    assert importance.line(found).startswith("what mattered: driver 0.")
    assert "; cost (epochs): budget 0." in importance.line(found)


def test_the_epochs_mlflow_holds_win_over_the_reported_steps() -> None:
    """Cost is the epochs each trial's MLflow run says it reached, where it has one: here
    they follow `noise`, whatever steps the trials reported."""
    study = synthetic()
    epochs = {t.number: epochs_for(t.params["noise"]) for t in study.trials}
    cost = importance.what_mattered(study, SEARCH, epochs)["cost"]["ranking"]
    assert list(cost)[0] == "noise", cost


def test_pruned_trials_count_with_their_last_intermediate_value() -> None:
    """A third of the trials PRUNED without a value: each counts with its last epoch's
    value, so the driver still ranks first over all 24."""
    study = synthetic(pruned_every=3)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 8 and all(t.value is None for t in pruned)
    found = importance.what_mattered(study, SEARCH)
    assert found["trials"] == 24
    assert list(found["objective"]["ranking"])[0] == "driver"
    assert list(found["cost"]["ranking"])[0] == "budget"
    assert importance.value_of(pruned[0]) == pruned[0].params["driver"]


def test_a_trial_pruned_through_tell_counts_and_failed_ones_do_not() -> None:
    """Optuna's own tell(PRUNED) gives the trial its last reported value; a failed trial,
    one still running and a pruned one that reported nothing are left out."""
    study = synthetic(n=5)
    trial = study.ask(FLOATS)
    for epoch in (1, 2):
        trial.report(0.1 * epoch, epoch)
    study.tell(trial, state=TrialState.PRUNED)
    assert study.trials[-1].value == pytest.approx(0.2)
    study.tell(study.ask(FLOATS), state=TrialState.PRUNED)  # no epoch reported
    study.tell(study.ask(FLOATS), state=TrialState.FAIL)
    study.ask(FLOATS)  # still running
    found = importance.what_mattered(study, SEARCH)
    assert found["trials"] == 6
    assert importance.value_of(study.trials[5]) == pytest.approx(0.2)


def test_too_few_trials_say_so_and_log_no_metric() -> None:
    found = importance.what_mattered(synthetic(n=4), SEARCH)
    why = "4 trials with a value; needs 5"
    assert found["objective"] == {"target": "val_iou", "why": why}
    assert found["cost"] == {"target": "epochs", "why": why}
    assert importance.metrics(found) == {}
    assert importance.line(found) == f"what mattered: none ({why})"


def test_a_grid_says_why_it_has_no_ranking() -> None:
    grid = SimpleNamespace(metric="val_iou", mode="max", grid=[{"name": "a"}, {"name": "b"}])
    runs = CategoricalDistribution(["a", "b"])
    study = optuna.create_study(direction="maximize")
    for i in range(6):
        study.add_trial(
            create_trial(params={"run": "ab"[i % 2]}, distributions={"run": runs}, value=i / 10)
        )
    found = importance.what_mattered(study, grid)
    assert found["objective"]["why"].startswith("a grid search")
    assert importance.metrics(found) == {}
    assert importance.line(found).startswith("what mattered: none (a grid search")


def test_conditional_and_constant_params_are_not_ranked() -> None:
    """`alpha` sampled only for some trials (a `when:` dimension), `loss` one value in
    every trial: listed with why; the rest ranked. Equal epochs: the cost says why."""
    rng = random.Random(0)
    loss = CategoricalDistribution(["combo", "dice"])
    study = optuna.create_study(direction="maximize")
    for i in range(8):
        params = {"lr": rng.random(), "loss": "combo"}
        dists = {"lr": FloatDistribution(0.0, 1.0), "loss": loss}
        if i % 2:
            params["alpha"], dists["alpha"] = rng.random(), FloatDistribution(0.0, 1.0)
        study.add_trial(create_trial(params=params, distributions=dists, value=params["lr"]))
    found = importance.what_mattered(study, SEARCH, {i: 5 for i in range(8)})
    assert found["objective"]["ranking"] == {"lr": 1.0}
    assert found["unranked"] == {
        "alpha": "sampled in only some trials (conditional)",
        "loss": "took one value in every trial",
    }
    assert found["cost"]["why"] == "every trial reached 5 epochs: nothing to explain"
    assert importance.line(found) == (
        "what mattered: lr 1.00; cost (epochs): none (every trial reached 5 epochs: "
        "nothing to explain)"
    )


# -- on MLflow and in the report


def test_a_ranking_beside_a_reason_draws_one_chart_and_the_reason() -> None:
    why = "every trial reached 5 epochs: nothing to explain"
    found = Mattered({"objective": {"lr": 1.0}, "cost": {}}, {"cost": why})
    data = StudyData("exp", "s", "sqlite:///x.db", [], "val_iou", "max", importance=found)
    fig = fig_importance(data)
    assert len(fig.data) == 1 and list(fig.data[0].y) == ["lr"]
    notes = [a.text for a in fig.layout.annotations]
    assert f"no ranking: {why}".replace(" nothing to", " nothing<br>to") in notes  # wrapped


def store(tmp_path: Path):
    """A real SQLite MLflow store with one experiment; its client and the experiment id."""
    from mlflow.tracking import MlflowClient

    shutil.copyfile(mlflow_template(), tmp_path / "mlflow.db")  # migrated once per process
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("imp", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, c, exp


def study_runs(c, exp: str, study: optuna.Study, tags: dict[str, str] | None = None) -> tuple:
    """A parent run and one trial run per Optuna trial, as study.run lays them out; the
    trials' `epochs` tags follow `budget`."""
    parent = c.create_run(
        exp,
        run_name="s #1",
        tags={Tag.STUDY: "s", Tag.ROLE: Role.STUDY, Tag.INVOCATION: "1"} | (tags or {}),
    )
    c.log_param(parent.info.run_id, Param.OBJECTIVE, schema.dump_objective("val_iou", "max"))
    for t in study.trials:
        run = c.create_run(
            exp,
            run_name=f"#{t.number} unet combo",
            tags={Tag.PARENT: parent.info.run_id, Tag.STUDY: "s", Tag.ROLE: Role.TRIAL}
            | {Tag.OPTUNA_TRIAL: str(t.number), Tag.STATUS: "completed"}
            | {Tag.EPOCHS: str(epochs_for(t.params["budget"])), Tag.MODEL: "unet"},
        )
        c.log_metric(run.info.run_id, "val_iou", t.params["driver"], step=1)
        c.set_terminated(run.info.run_id, "FINISHED")
    return parent.info.run_id, c.search_runs([exp], f"tags.{Tag.ROLE} = 'trial'")


def test_the_parent_run_holds_the_rankings_and_the_report_draws_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    uri, c, exp = store(tmp_path)
    study = synthetic(pruned_every=4)
    registry = "flairseg-s version 3: champion (val_iou 0.812, +0.022 over version 2) <b>x</b>"
    parent_id, trial_runs = study_runs(c, exp, study, {Tag.REGISTRY: registry})
    found = importance.record(c, parent_id, study, SEARCH, trial_runs)
    assert capsys.readouterr().out == ""  # no warning
    c.set_terminated(parent_id, "FINISHED")
    logged = c.get_run(parent_id).data.metrics
    assert (
        logged == importance.metrics(found) and list(found["objective"]["ranking"])[0] == "driver"
    )
    assert {a.path for a in c.list_artifacts(parent_id)} == {Artifact.IMPORTANCE}
    saved = json.loads(
        Path(c.download_artifacts(parent_id, Artifact.IMPORTANCE, str(tmp_path))).read_text()
    )
    assert saved == found

    data = load(uri, "imp", "s")
    assert data.importance is not None and data.importance.why == {}
    assert list(data.importance.rankings["objective"])[0] == "driver"
    assert list(data.importance.rankings["cost"])[0] == "budget"
    fig = fig_importance(data)
    objective, cost = fig.data
    assert objective.orientation == "h" and list(objective.y)[-1] == "driver"  # on top
    assert list(cost.y)[-1] == "budget"
    assert "the objective, val_iou" in [a.text for a in fig.layout.annotations]
    page, count = build(data)
    assert count == len(FIGURES) and [n for n, _ in FIGURES].index("importance") == 6
    assert 'id="fig-importance"' in page
    facts = dict(zip(*fig_facts_rows(data), strict=True))
    assert facts["model registry"] == registry.replace("<", "&lt;").replace(">", "&gt;")


def fig_facts_rows(data) -> tuple[list, list]:
    from dashboards.figures import fig_facts

    cells = fig_facts(data).data[0].cells.values
    return list(cells[0]), list(cells[1])


def test_a_study_with_no_ranking_shows_why_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Three trials: no metric on the parent, the reason in importance.json, read back by
    the report; a parent that logged nothing (an older study) says it was not computed,
    and has no registry row in its facts."""
    uri, c, exp = store(tmp_path)
    study = synthetic(n=3)
    parent_id, trial_runs = study_runs(c, exp, study)
    found = importance.record(c, parent_id, study, SEARCH, trial_runs)
    assert capsys.readouterr().out == ""
    assert not [k for k in c.get_run(parent_id).data.metrics if "importance" in k]
    assert found["objective"]["why"] == "3 trials with a value; needs 5"
    data = load(uri, "imp", "s")
    assert data.importance is not None and data.importance.rankings == {"objective": {}, "cost": {}}
    why = "3 trials with a value; needs 5"
    assert data.importance.why == {"objective": why, "cost": why}
    assert fig_importance(data).layout.annotations[0].text == f"no ranking: {why}"

    older = tmp_path / "older"
    older.mkdir()
    uri, c, exp = store(older)
    study_runs(c, exp, study)
    data = load(uri, "imp", "s")
    assert data.importance is None
    assert fig_importance(data).layout.annotations[0].text == NOT_COMPUTED
    assert "model registry" not in fig_facts_rows(data)[0]


def test_a_failure_is_one_warning_and_never_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A search that is not one (no metric): what mattered is not computed, the study goes on."""
    _, c, exp = store(tmp_path)
    study = synthetic(n=6)
    parent_id, trial_runs = study_runs(c, exp, study)
    found = importance.record(c, parent_id, study, SimpleNamespace(grid=[]), trial_runs)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("warning: what mattered was not computed")
    assert found == {"why": "not computed: AttributeError"}
    assert importance.line(found) == "what mattered: none (not computed: AttributeError)"
