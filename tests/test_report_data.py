"""The report from hand-made data, no MLflow: the axes and knobs it derives, every figure
built from loaded data alone, and the pictures drawn by flairseg.viz."""

from __future__ import annotations

import numpy as np
import pytest

from dashboards.figures import (
    fig_best_table,
    fig_curves,
    fig_facts,
    fig_family,
    fig_hyper,
    fig_parallel,
)
from dashboards.load import EvolutionFrames, StudyData, Trial
from dashboards.page import FIGURES, build
from dashboards.pictures import fig_evolution, fig_overlays, panels
from flairseg.viz import blend, heat

BASE = {"model": "unet", "loss": "combo", "alpha": "0.5", "lr": "0.001", "batch_size": "16"}
BASE |= {"epochs": "3", "image_size": "32", "channels": "3", "seed": "0", "augment": "True"}
UNET = {"depth": "2", "width": "8", "norm": "batch"}
SETR = {"num_cuts": "8", "depth": "1", "dim": "32", "heads": "2", "mlp_dim": "32"}


def trial(number: int, params: dict[str, str], sampled: list[str], score: float) -> Trial:
    model = params.get("model", "unet")
    return Trial(
        run_id=f"run{number}",
        name=f"#{number} {model}",
        number=number,
        model=model,
        loss="combo",
        status="completed",
        params={**BASE, **params},
        sampled=sampled,
        metrics={"val_iou": score, "val_dice": score},
        epochs=3,
        planned=3,
        curve=[(1, score / 2), (2, score)],
    )


def study(trials: list[Trial], **extra) -> StudyData:
    return StudyData("exp", "s", "sqlite:///nowhere.db", trials, "val_iou", "max", **extra)


def test_axes_are_what_was_sampled_or_varies_in_the_reports_order() -> None:
    data = study(
        [
            trial(0, {**UNET, "lr": "0.001"}, ["lr", "width"], 0.1),
            trial(1, {**UNET, "lr": "0.01", "width": "16", "batch_size": "8"}, ["lr"], 0.2),
            trial(2, {"model": "setr", **SETR, "epochs": "5"}, ["lr"], 0.3),
            trial(3, {"model": "setr", **SETR, "num_cuts": "4"}, ["lr"], 0.4),
        ]
    )
    # depth differs between the models only (a different knob each): not an axis;
    # num_cuts varies among the SETRs, width is sampled; epochs and batch_size vary
    assert data.hyperparameters() == ["lr", "width", "num_cuts", "epochs", "batch_size"]
    assert data.trials[2].knobs == ["num_cuts", "depth", "dim", "heads", "mlp_dim"]
    fig = fig_hyper(data)
    assert [a.text for a in fig.layout.annotations] == data.hyperparameters()
    labels = [d.label for d in fig_parallel(data).data[0].dimensions]
    assert labels == ["model / loss", "log10 lr", "width", "num_cuts", "epochs", "batch_size"] + [
        "epochs run",
        "val_iou",
    ]


def test_a_fixed_grid_with_nothing_varying_says_so() -> None:
    data = study([trial(0, UNET, [], 0.1), trial(1, UNET, [], 0.2)])
    assert data.hyperparameters() == []
    assert "samples no hyperparameter" in fig_hyper(data).layout.annotations[0].text


def test_the_best_table_lists_the_best_models_own_knobs() -> None:
    data = study([trial(0, {"model": "setr", **SETR}, ["lr"], 0.3)])
    config = fig_best_table(data).data[0].cells.values[2][0]
    assert (
        config == "alpha=0.5, lr=0.001, num_cuts=8, depth=1, dim=32, heads=2, mlp_dim=32, epochs=3"
    )


def frames(epochs: int = 3, k: int = 2, size: int = 8) -> EvolutionFrames:
    rng = np.random.default_rng(0)
    return EvolutionFrames(
        names=[f"p_{i}" for i in range(k)],
        epochs=list(range(1, epochs + 1)),
        images=rng.integers(0, 255, (k, size, size), dtype=np.uint8),
        masks=(rng.random((k, size, size)) > 0.7).astype(np.uint8),
        probs=rng.integers(0, 255, (epochs, k, size, size), dtype=np.uint8),
    )


def test_every_figure_builds_from_loaded_data_alone() -> None:
    best = trial(1, UNET, ["lr"], 0.9)
    data = study(
        [trial(0, UNET, ["lr"], 0.1), best],
        evolutions={best.run_id: frames()},
        split={"train": ["a"], "val": ["b"], "test": ["c"]},
        tags={"search": "hand-made"},
    )
    page, count = build(data)
    assert count == len(FIGURES) == 12
    assert "train: 1 patients (a)" in page and "hand-made" in page
    assert len(fig_overlays(data).data) == 1  # one group, one row of pictures
    evolution = fig_evolution(data)
    assert [t.visible for t in evolution.data] == [False, False, True]  # the last epoch shown


def test_panels_are_flairseg_viz_overlays() -> None:
    f = frames()
    grey, truth, prob = panels(f, -1, 0)
    assert grey.shape == (8, 8, 3) and np.array_equal(grey[..., 0], f.images[0])
    green = np.array([0, 255, 0], np.uint8)
    assert np.array_equal(truth, blend(grey, green, 0.45 * (f.masks[0] > 0)))
    p = f.prob(-1, 0)
    assert np.array_equal(prob, blend(grey, heat(p), 0.75 * p))


# A cross-validated study (`--folds K`): the scores are fold means with their spread.
K = 3


def cv_trial(number: int, score: float, sd: float, params: dict[str, str] | None = None) -> Trial:
    """A trial of a K-fold study: val means with `_std`, and (scored on test) the fold
    ensemble under `test_iou` and one model's mean ± sd under `test_iou_single`."""
    t = trial(number, {**UNET, **(params or {})}, ["lr"], score)
    t.metrics |= {"val_iou_std": sd, "val_dice_std": sd / 2}
    t.metrics |= {f"fold{k}/val_iou": score + (k - 2) * sd for k in range(1, K + 1)}
    t.metrics |= {"test_iou": score + 0.01, "test_iou_single": score - 0.01}
    t.metrics |= {"test_iou_single_std": sd, "fold1/test_iou": score}
    t.curve_std = [(1, sd * 2), (2, sd)]
    return t


def cv_study(folds: int | None) -> StudyData:
    return study(
        [cv_trial(0, 0.5, 0.04, {"lr": "0.01"}), cv_trial(1, 0.8, 0.03)],
        folds=folds,
        split={"fold 1": ["a"], "fold 2": ["b"], "fold 3": ["c"], "test": ["d"]},
    )


def error_bars(fig) -> list[list]:
    """The `error_y` arrays of the figure's traces that draw error bars."""
    return [
        list(t.error_y.array)
        for t in fig.data
        if getattr(t, "error_y", None) is not None and t.error_y.array is not None
    ]


def test_a_cross_validated_study_shows_the_fold_spread_on_every_score() -> None:
    data = cv_study(K)
    family = fig_family(data)
    bars = error_bars(family)
    assert [0.04, 0.03] in bars  # each trial's val IoU ± sd, beside its group's box
    assert [0.03] in bars  # the star on the group's best carries its bar too
    assert [0.02, 0.015] in bars  # val Dice's own sd in the Dice panel
    assert list(family.layout.xaxis.ticktext) == ["unet / combo"]
    assert "± 1 sd over the 3 folds" in family.layout.title.text
    assert error_bars(fig_hyper(data)) == [[0.04, 0.03]]  # one axis (lr), one group
    cells = fig_best_table(data).data[0].cells.values
    assert cells[3][0] == "0.800 ± 0.030"  # val IoU of the best: mean ± sd
    assert cells[7][0] == "0.810 ensemble<br>0.790 ± 0.030"  # test IoU
    assert cells[8][0] == "not scored"  # test Dice never scored
    bands = [t for t in fig_curves(data).data if t.fill == "toself"]
    assert len(bands) == 2  # one translucent band per trial, under its line
    assert list(bands[1].x) == [1, 2, 2, 1]
    assert list(bands[1].y) == pytest.approx([0.46, 0.83, 0.77, 0.34])  # mean ± sd, closed
    assert bands[1].fillcolor.startswith("rgba(")
    facts = fig_facts(data).data[0].cells.values
    row = dict(zip(facts[0], facts[1], strict=True))
    assert row["validation"].startswith("patient 3-fold cross-validation")
    assert "fold 1: 1 patients (a)" in row["split"]
    labels = [d.label for d in fig_parallel(data).data[0].dimensions]
    assert labels[-2:] == ["val_iou", "val_iou sd over 3 folds"]
    page, _ = build(data)
    assert "patient 3-fold cross-validated" in page


def test_without_folds_the_spread_is_not_drawn_even_where_logged() -> None:
    """folds None: no bar, band, row, column or ± (the `_std` metrics are ignored), and the
    figures are those of the same trials without any spread logged."""
    data = cv_study(None)
    plain = study([trial(0, {**UNET, "lr": "0.01"}, ["lr"], 0.5), trial(1, UNET, ["lr"], 0.8)])
    for t, p in zip(data.trials, plain.trials, strict=True):
        p.metrics |= {k: v for k, v in t.metrics.items() if k.startswith("test_iou")}
    builders = (fig_family, fig_best_table, fig_hyper, fig_parallel, fig_curves, fig_facts)
    for builder in builders:
        fig = builder(data)
        assert error_bars(fig) == []
        assert not any(getattr(t, "fill", None) for t in fig.data)
        text = str(fig.to_plotly_json())
        assert "±" not in text and "sd over" not in text and "validation" not in text
        if builder is not fig_facts:  # (the facts list the split, which differs)
            assert fig.to_plotly_json() == builder(plain).to_plotly_json(), builder.__name__
    assert fig_best_table(data).data[0].cells.values[7][0] == "0.8100"  # the usual key alone
    assert "cross-validated" not in build(data)[0]


def _log_study(c, exp: str, name: str, folds: int | None) -> None:
    """A parent run and one finished trial as study.run logs them (study/callbacks.py),
    two epochs; with `folds`, the fold mean, its sd and each fold's own value."""
    from study import schema
    from study.schema import Param, Role, Tag

    fold_tags = {Tag.FOLDS: str(folds)} if folds else {}
    split = {f"fold {k}": [f"p{k}"] for k in range(1, (folds or 0) + 1)} | {"test": ["t"]}
    parent = c.create_run(
        exp,
        run_name=f"{name} #1",
        tags={
            Tag.STUDY: name,
            Tag.SEARCH: name,
            Tag.ROLE: Role.STUDY,
            Tag.INVOCATION: "1",
            Tag.SPLIT: schema.dump_split(split),
        }
        | fold_tags,
    )
    c.log_param(parent.info.run_id, Param.OBJECTIVE, schema.dump_objective("val_iou", "max"))
    run = c.create_run(
        exp,
        run_name=f"#0 {name}",
        tags={
            Tag.PARENT: parent.info.run_id,
            Tag.STUDY: name,
            Tag.SEARCH: name,
            Tag.ROLE: Role.TRIAL,
            Tag.OPTUNA_TRIAL: "0",
            Tag.MODEL: "unet",
            Tag.LOSS: "combo",
            Tag.STATUS: "completed",
            Tag.PLANNED_EPOCHS: "2",
            Tag.EPOCHS: "2",
        }
        | fold_tags,
    )
    for k, v in {**BASE, **UNET, "epochs": "2"}.items():
        c.log_param(run.info.run_id, k, v)
    for step, (one, two) in enumerate([(0.2, 0.4), (0.5, 0.7)], start=1):
        scores = {"val_iou": (one + two) / 2}
        if folds:
            scores |= {"val_iou_std": abs(two - one), "fold1/val_iou": one, "fold2/val_iou": two}
        for key, value in scores.items():
            c.log_metric(run.info.run_id, key, value, step=step)
    c.set_terminated(run.info.run_id, "FINISHED")
    c.set_terminated(parent.info.run_id, "FINISHED")


def test_load_reads_the_folds_and_the_spread_from_mlflow(tmp_path, monkeypatch) -> None:
    """From a real SQLite store: K from the parent's tag, the final sd among the metrics,
    the sd curve beside the curve; a study without folds asks MLflow for no sd history."""
    from mlflow.tracking import MlflowClient

    from dashboards import load as loader
    from study import schema

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("cv", artifact_location=(tmp_path / "artifacts").as_uri())
    _log_study(c, exp, "folded", 2)
    _log_study(c, exp, "plain", None)
    asked: list[str] = []

    class Spy(MlflowClient):
        def get_metric_history(self, run_id: str, key: str):
            asked.append(key)
            return super().get_metric_history(run_id, key)

    monkeypatch.setattr(schema, "client", lambda u: Spy(tracking_uri=u))
    data = loader.load(uri, "cv", "folded")
    assert data.folds == 2 and list(data.split) == ["fold 1", "fold 2", "test"]
    (t,) = data.trials
    assert t.metrics["val_iou"] == pytest.approx(0.6)
    assert t.spread("val_iou") == pytest.approx(0.2)
    assert t.metrics["fold2/val_iou"] == pytest.approx(0.7)
    assert [x for x, _ in t.curve] == [x for x, _ in t.curve_std] == [1, 2]
    assert [y for _, y in t.curve] == pytest.approx([0.3, 0.6])
    assert [y for _, y in t.curve_std] == pytest.approx([0.2, 0.2])
    assert asked == ["val_iou", "val_iou_std"]
    asked.clear()
    plain = loader.load(uri, "cv", "plain")
    assert plain.folds is None and plain.trials[0].curve_std == []
    assert plain.trials[0].spread("val_iou") is None
    assert asked == ["val_iou"]  # no extra request without folds


def test_throughput_is_one_bar_per_trial_that_measured_it() -> None:
    from dashboards.throughput import NONE, fig_throughput

    fast, slow, old = (
        trial(0, UNET, ["lr"], 0.5),
        trial(1, UNET, ["lr"], 0.6),
        trial(2, UNET, [], 0.1),
    )
    fast.metrics.update(images_per_s=120.0, peak_memory_mb=900.0, training_seconds=30.0)
    slow.metrics.update(images_per_s=40.0)
    fig = fig_throughput(study([slow, fast, old]))
    (bars,) = fig.data
    assert list(bars.x) == ["#0 unet", "#1 unet"] and list(bars.y) == [120.0, 40.0]
    assert (
        bars.text[0] == "900 MB peak, 30 s training" and bars.text[1] == "no memory or cost logged"
    )
    assert NONE in str(fig_throughput(study([old])).layout.annotations[0].text)


def test_the_front_section_draws_points_front_and_answer() -> None:
    from dashboards.front import NO_COST, fig_front

    def point(n: int, objective: float, cost: float) -> dict:
        return {"trial": n, "name": f"#{n}", "objective": objective, "cost": cost,
                "epochs": 3, "model": "unet"}  # fmt: skip

    made = {
        "objective": "val_iou", "cost": "training_seconds", "answer": 1, "rule": "the rule",
        "points": [point(0, 0.8, 50), point(1, 0.79, 20), point(2, 0.5, 30)],
        "front": [point(1, 0.79, 20), point(0, 0.8, 50)],
    }  # fmt: skip
    fig = fig_front(study([trial(0, UNET, [], 0.8)], front=made))
    points, line, answer = fig.data
    assert list(points.x) == [50, 20, 30] and list(line.x) == [20, 50]
    assert list(answer.x) == [20] and answer.name == "the answer: trial #1"
    assert "the rule" in fig.layout.title.text
    assert NO_COST in str(fig_front(study([trial(0, UNET, [], 0.8)])).layout.annotations[0].text)


def test_a_study_with_a_cost_says_its_answer_is_the_fronts() -> None:
    from dashboards.answer import fig_answer

    made = {"objective": "val_iou", "cost": "parameters", "answer": 4, "rule": "R", "front": [],
            "points": []}  # fmt: skip
    text = str(fig_answer(study([trial(0, UNET, [], 0.8)], front=made)).layout.annotations[0].text)
    assert "its answer is trial #4, R" in text and "--no-confirm" not in text
