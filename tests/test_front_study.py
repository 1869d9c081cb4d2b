"""A study with a cost, end to end (real Ray, Optuna, MLflow, Chromium): Optuna proposes for
two objectives, every trial logs its costs, the front in the summary, --json, MLflow and the
report is the one recomputed here from the trials' values, and the answer is scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from browser import render
from study_helpers import StudyEnv, write_search
from test_front import by_definition

from flairseg.errors import ConfigError
from study import front, schema
from study import search as searches
from study.schema import Role, Tag

COSTLY = """
description: "width against IoU: wider U-Nets cost more seconds"
objective: {metric: val_iou, mode: max}
cost: {metric: training_seconds, tolerance: 0.02}
fixed: {model: unet, loss: combo, image_size: 32}
space:
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  unet:
    width: {choice: [4, 8, 16]}
trials: 6
asha: {max_epochs: 3, grace_period: 1, reduction_factor: 2}
sampler: {startup_trials: 3}
concurrency: 2
"""


def test_a_search_with_a_cost_refuses_a_confirmation(tmp_path: Path) -> None:
    raw = {"space": {"alpha": {"uniform": [0.0, 1.0]}}, "cost": "parameters"}
    assert searches.parse(raw, "c").confirm == 0  # answered by its front
    with pytest.raises(ConfigError, match=r"^--confirm: a search with a cost"):
        searches.parse(raw, "c", overrides={"confirm": 2})
    with pytest.raises(ConfigError, match=r"^<dict>: confirm: a search with a cost"):
        searches.parse({**raw, "confirm": {"finalists": 2}}, "c")


@pytest.mark.slow
def test_a_study_with_a_cost_reports_its_front_and_takes_the_cheapest_near_the_best(
    tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    search = write_search(tmp_path / "costly.yaml", COSTLY)
    out = tmp_path / "summary.json"
    done = env.run("--search", str(search), "--json", str(out))
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "quality against training_seconds:" in text and "the answer: trial #" in text, text
    summary = json.loads(out.read_text())
    made = summary["front"]

    # every trial logged its costs, and Optuna kept the cost its sampler reads
    runs = [r for r in env.runs("costly") if r.data.tags[Tag.ROLE] == Role.TRIAL]
    assert len(runs) == 6
    for run in runs:
        for cost in schema.COSTS:
            assert math.isfinite(run.data.metrics[cost]), (run.info.run_name, cost)
    study = env.study("costly")
    ended = [t for t in study.trials if t.state.is_finished() and t.value is not None]
    assert all(t.user_attrs.get("cost", 0) > 0 for t in ended)

    # the front, recomputed here by its definition from what MLflow holds
    points = front.points(runs, "val_iou", "training_seconds")
    assert {p["trial"] for p in made["front"]} == by_definition(points, "max")
    assert len(made["points"]) == len(points) == made["trials"]
    best = max(made["front"], key=lambda p: p["objective"])
    near = [p for p in made["front"] if best["objective"] - p["objective"] <= 0.02 + 1e-12]
    assert made["answer"] == min(near, key=lambda p: (p["cost"], p["trial"]))["trial"]
    assert summary["best_trial"] == made["answer"]  # what is scored and registered
    assert "test_iou" in summary

    (parent,) = [r for r in env.runs("costly") if r.data.tags[Tag.ROLE] == Role.STUDY]
    assert parent.data.tags[Tag.ANSWER].startswith(f"the answer: trial #{made['answer']}")
    logged = json.loads(Path(env.client().download_artifacts(
        parent.info.run_id, schema.Artifact.FRONT, str(tmp_path))).read_text())  # fmt: skip
    assert logged["front"] == made["front"]

    page = tmp_path / "studies" / "costly" / "run-1" / "report.html"
    shown = render(page)
    assert shown.console == [], shown.console
    assert "Quality against cost" in shown.dom and f"trial #{made['answer']}" in shown.dom
