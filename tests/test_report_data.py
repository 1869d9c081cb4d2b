"""The report from hand-made data, no MLflow: the axes and knobs it derives, every figure
built from loaded data alone, and the pictures drawn by flairseg.viz."""

from __future__ import annotations

import numpy as np

from dashboards.figures import fig_best_table, fig_hyper, fig_parallel
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
    assert count == len(FIGURES) == 8
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
