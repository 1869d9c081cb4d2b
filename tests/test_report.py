"""The study report: built from MLflow, opened in headless Chromium; degenerate studies; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import render, screenshot
from cluster import MlflowServer
from PIL import Image
from study_helpers import REPO, StudyEnv, write_search

from flairseg.config import TrainConfig
from study import schema, tracking
from study.schema import Param, Role, Status, Tag
from tests.inproc import call_cli

FIGURES = 12
SPLIT = {"train": ["O'Brien_1", "p2"], "val": ["b"], "test": ["c"]}  # a quote in an ID
ONE_TRIAL = [{"model": "unet", "loss": "dice", "status": "completed", "curve": [0.1, 0.3, 0.5]}]

FAMILY = """
description: "two families, one stopped early, one failed"
objective: {metric: val_loss, mode: min}
fixed:
  image_size: 32
  unet: {width: 8}
  setr: {depth: 1, dim: 32, heads: 2, mlp_dim: 32}
space:
  model: {choice: [unet, setr]}
  loss: {choice: [dice, combo]}
  lr: {choice: [0.003, 0.0000001, 1.0e+30]}
points:
  - {model: unet, loss: combo, lr: 0.003}
  - {model: setr, loss: combo, lr: 0.003}
  - {model: unet, loss: combo, lr: 0.0000001}
  - {model: unet, loss: dice, lr: 1.0e+30}
trials: 4
asha: {max_epochs: 3, grace_period: 1, reduction_factor: 2}
concurrency: 1
"""


def report(env: StudyEnv, *args: str) -> subprocess.CompletedProcess:
    """`python -m dashboards.report` on `env`'s store, in this process (tests.inproc)."""
    return call_cli("dashboards.report", "--mlflow-uri", env.mlflow_uri, *args, cwd=env.root)


def assert_opens_clean(page: Path, tmp_path: Path) -> None:
    shown = render(page)
    assert shown.console == [], shown.console
    assert shown.drawn == FIGURES, shown.dom[-2000:]
    assert shown.dom.count('class="main-svg"') >= FIGURES
    assert shown.attr("data-all-drawn-ms") is not None
    shot = np.asarray(Image.open(screenshot(page, tmp_path / "shot.png")).convert("L"))
    assert shot.std() > 10 and len(np.unique(shot)) > 50  # not a blank page


def _fake_study(
    env: StudyEnv, experiment: str, trials: list[dict], split: str | None = None
) -> None:
    """A study written straight into MLflow through study.schema and study.tracking, as
    study.run lays it out (no Ray): degenerate cases. `split` is the parent's split tag as
    stored (default: the schema's JSON)."""
    from mlflow.entities import Param as MlflowParam

    env._prefill()  # an empty store copied from study_helpers.mlflow_template: no migrations
    c = schema.client(env.mlflow_uri)
    exp = c.create_experiment(experiment)
    parent = c.create_run(
        exp,
        run_name="s #1",
        tags={
            Tag.STUDY: "s",
            Tag.ROLE: Role.STUDY,
            Tag.INVOCATION: "1",
            Tag.SEARCH: experiment,
            Tag.SPLIT: schema.dump_split(SPLIT) if split is None else split,
        },
    )
    c.log_param(parent.info.run_id, Param.OBJECTIVE, schema.dump_objective("val_iou", "max"))
    for i, t in enumerate(trials):
        config = TrainConfig(model=t["model"], loss=t["loss"], lr=0.001, epochs=3)
        sampled = {"lr": config.lr}
        run = c.create_run(
            exp,
            run_name=tracking.run_name(i, config, sampled),
            tags={
                Tag.PARENT: parent.info.run_id,
                Tag.STUDY: "s",
                Tag.ROLE: Role.TRIAL,
                Tag.OPTUNA_TRIAL: str(i),
                Tag.MODEL: config.model,
                Tag.LOSS: config.loss,
                Tag.STATUS: t["status"],
                Tag.EPOCHS: str(len(t.get("curve", []))),
                Tag.PLANNED_EPOCHS: str(config.epochs),
            },
        )
        params = [MlflowParam(k, str(v)) for k, v in tracking.trial_params(config).items()]
        params += [MlflowParam(Param.SAMPLED_PREFIX + k, str(v)) for k, v in sampled.items()]
        c.log_batch(run.info.run_id, params=params)
        for step, v in enumerate(t.get("curve", [])):
            scores = {f"val_{k}": v for k in ("iou", "dice", "pixel_accuracy", "mean_accuracy")}
            tracking.log_metrics(c, run.info.run_id, scores, step=step + 1)
        failed = t["status"] == Status.FAILED
        c.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED")
    c.set_terminated(parent.info.run_id, "FINISHED")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trials", "said"),
    [
        (ONE_TRIAL, "no best model with saved predictions"),
        (
            [
                {"model": "unet", "loss": "dice", "status": "failed"},
                {"model": "unet", "loss": "bce", "status": "failed"},
            ],
            "no trial finished with scores",
        ),
        ([], "no trials in this study"),
    ],
    ids=["one-trial", "all-failed", "empty"],
)
def test_degenerate_studies_say_what_is_missing(
    tmp_path: Path, phantom_dir: Path, trials: list, said: str
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    _fake_study(env, "degenerate", trials)
    out = tmp_path / "r.html"
    result = report(env, "--experiment", "degenerate", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert said in out.read_text()
    assert_opens_clean(out, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["json", "old str(dict)"])
def test_the_split_reads_in_either_stored_form(
    tmp_path: Path, phantom_dir: Path, form: str
) -> None:
    """Stores written before the schema hold the split as `str(dict)`: the report still opens
    and lists the patients (a quote in an ID would break a quote-replacing reader)."""
    env = StudyEnv(tmp_path, phantom_dir)
    stored = schema.dump_split(SPLIT) if form == "json" else str(SPLIT)
    _fake_study(env, "splits", ONE_TRIAL, split=stored)
    out = tmp_path / "r.html"
    result = report(env, "--experiment", "splits", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "train: 2 patients (O'Brien_1, p2); val: 1 patients (b)" in out.read_text()
    if form != "json":  # (the JSON form opens in every other report test)
        assert_opens_clean(out, tmp_path)


def test_building_a_report_imports_no_torch(tmp_path: Path, phantom_dir: Path) -> None:
    """The whole build (MLflow read, figures, page), not just the import, stays torch-free."""
    env = StudyEnv(tmp_path, phantom_dir)
    _fake_study(env, "light", ONE_TRIAL)
    argv = [
        "--mlflow-uri",
        env.mlflow_uri,
        "--experiment",
        "light",
        "--out",
        str(tmp_path / "r.html"),
    ]
    code = (
        "import sys\n"
        "from dashboards.report import main\n"
        f"assert main({argv!r}) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (("--experiment", "nope"), "--experiment nope"),
        (("--experiment", "degenerate", "--study", "nope"), "--study nope"),
    ],
)
def test_unknown_experiment_or_study_exits_2(
    tmp_path: Path, phantom_dir: Path, args: tuple, culprit: str
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    _fake_study(env, "degenerate", [])
    result = report(env, *args, "--out", str(tmp_path / "r.html"))
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip()] and culprit in result.stderr
    )
    assert not (tmp_path / "r.html").exists()


def _get(url: str, payload: dict | None = None) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_a_real_study_over_http_and_its_report_in_chromium(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """One real study (two families, an ASHA stop, a failure) logged over HTTP to a real
    MLflow server; the report it writes opens clean in Chromium, is on the parent run, and
    a report built from the server alone opens too."""
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts")
    base = server.url
    try:
        env = StudyEnv(tmp_path, phantom_dir)
        argv = env.argv("--search", str(write_search(tmp_path / "fam.yaml", FAMILY)))
        argv[argv.index("--mlflow-uri") + 1] = base
        result = subprocess.run(
            argv, cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=env.env()
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "report: " in result.stdout
        _check_runs_over_rest(base + "/api/2.0/mlflow", "fam")
        _check_study_report(tmp_path / "studies" / "fam" / "run-1" / "report.html", tmp_path)
        out = tmp_path / "from-server.html"
        built = subprocess.run(
            [sys.executable, "-m", "dashboards.report", "--mlflow-uri", base, "--experiment", "fam", "--out", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        assert_opens_clean(out, tmp_path)
    finally:
        server.close()


def _check_runs_over_rest(api: str, experiment: str) -> None:
    """The MLflow layout as the REST API shows it, the report on the parent run, and each
    model x loss group's best scored on test."""
    exp = _get(f"{api}/experiments/get-by-name?experiment_name={experiment}")["experiment"]
    runs = _get(
        f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100}
    )["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    (parent,) = [r for r, t in zip(runs, tags, strict=True) if t.get("role") == "study"]
    kids = [
        (r, t)
        for r, t in zip(runs, tags, strict=True)
        if t.get("mlflow.parentRunId") == parent["info"]["run_id"]
    ]
    assert len(kids) == 4
    for run, t in kids:
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert {"model", "loss", "alpha", "lr"} <= set(params)
        if t["status"] == "failed":
            continue
        history = _get(
            f"{api}/metrics/get-history?run_id={run['info']['run_id']}&metric_key=val_iou"
        )["metrics"]
        assert sorted(m["step"] for m in history) == list(range(1, int(t["epochs"]) + 1))
    assert all(r["info"]["status"] != "RUNNING" for r in runs)
    artifacts = _get(f"{api}/artifacts/list?run_id={parent['info']['run_id']}")["files"]
    assert "report.html" in {a["path"] for a in artifacts}
    scored = {(t["model"], t["loss"]) for _, t in kids if t.get("test_scored")}
    assert scored == {("unet", "combo"), ("setr", "combo")}


def _check_study_report(page: Path, tmp_path: Path) -> None:
    text = page.read_text()
    assert text.count('<script type="text/javascript">') == 1  # plotly.js once
    assert "<script src=" not in text  # no external script: it opens offline
    sections = ("family", "best", "hyperparameters", "parallel", "importance", "curves")
    for section in (*sections, "overlays", "evolution", "facts"):
        assert f'id="fig-{section}"' in text
    for name in ("unet / combo", "setr / combo", "stopped by ASHA at epoch 1"):
        assert name in text
    assert page.stat().st_size < 10e6
    assert_opens_clean(page, tmp_path)


def test_the_browser_check_sees_a_javascript_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    shown = render(page)
    assert any("undefinedFunction" in line for line in shown.console), shown.console
    assert shown.drawn == 0
