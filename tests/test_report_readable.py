"""What a new reader of the report needs to read it: learning curves that tell the trials of
a group apart, titles that fit the page, one format on the lr axis, overlay tiles large
enough to see with their columns named, and a report file as private as the rest.

Built from a real SQLite MLflow store laid out as study.run writes it (no training): two
groups, one of 12 trials, with sampled lr and alpha, stopped, failed and finished trials,
and each trial's evolution pictures of four 64 px slices.
"""

from __future__ import annotations

import colorsys
import os
import re
from pathlib import Path

import numpy as np
import pytest
from browser import render

from dashboards.load import StudyData, load
from dashboards.page import build
from dashboards.pictures import COLUMNS, fig_overlays
from flairseg.config import TrainConfig
from study import schema, tracking
from study.schema import Artifact, Param, Role, Status, Tag
from tests.inproc import call_cli

EXPERIMENT = "readable"
STUDY = "legible"
PATIENTS = [f"TCGA_CS_49{i}1_1996090{i}" for i in range(6)]
SLICES = [f"{p}_{15 + i}" for i, p in enumerate(PATIENTS[:4])]
# (model, loss, trials): a group of 12, as in the issue, beside a smaller one
GROUPS = [("unet", "combo", 12), ("setr", "dice", 4)]
REPO = Path(__file__).resolve().parents[1]


def _pictures(rng: np.random.Generator, size: int = 64) -> dict[str, np.ndarray]:
    """Four slices: a bright disc (a brain) holding a brighter blob (the lesion), predicted
    more sharply epoch by epoch."""
    yy, xx = np.mgrid[:size, :size] / size
    images, masks, probs = [], [], []
    for k in range(len(SLICES)):
        cy, cx = 0.4 + 0.05 * k, 0.45 + 0.04 * k
        lesion = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.01 + 0.004 * k
        brain = (yy - 0.5) ** 2 / 0.16 + (xx - 0.5) ** 2 / 0.12 < 1
        images.append((brain * 110 + lesion * 90 + rng.integers(0, 30, (size, size))).clip(0, 255))
        masks.append(lesion)
    for epoch in range(1, 4):
        noise = rng.random((len(SLICES), size, size)) * (0.5 / epoch)
        probs.append((np.array(masks) * (epoch / 3) + noise).clip(0, 1) * 255)
    return {
        "names": np.array(SLICES),
        "epochs": np.array([1, 2, 3]),
        "images": np.array(images, np.uint8),
        "masks": np.array(masks, np.uint8),
        "probs": np.array(probs, np.uint8),
    }


def _trial(c, exp: str, parent: str, number: int, model: str, loss: str, tmp: Path) -> None:
    from mlflow.entities import Param as MlflowParam

    rng = np.random.default_rng(number)
    sampled = {"alpha": float(rng.uniform(0, 1)), "lr": float(10 ** rng.uniform(-4, -2.5))}
    config = TrainConfig(model=model, loss=loss, epochs=3, image_size=64, **sampled)
    epochs, status = 3, Status.COMPLETED
    if number % 3 == 1:
        epochs, status = 1, schema.stopped_status(1)
    elif number == 5:
        epochs, status = 2, Status.FAILED
    run = c.create_run(
        exp,
        run_name=tracking.run_name(number, config, sampled),
        tags={Tag.PARENT: parent, Tag.STUDY: STUDY, Tag.ROLE: Role.TRIAL}
        | {Tag.OPTUNA_TRIAL: str(number), Tag.MODEL: model, Tag.LOSS: loss, Tag.STATUS: status}
        | {Tag.EPOCHS: str(epochs), Tag.PLANNED_EPOCHS: "3"},
    )
    rid = run.info.run_id
    params = [MlflowParam(k, str(v)) for k, v in tracking.trial_params(config).items()]
    params += [MlflowParam(Param.SAMPLED_PREFIX + k, str(v)) for k, v in sampled.items()]
    c.log_batch(rid, params=params)
    top = rng.uniform(0.3, 0.8)
    for step in range(1, epochs + 1):
        value = top * (1 - 0.5**step)
        scores = {f"val_{k}": value for k in ("iou", "dice", "pixel_accuracy", "mean_accuracy")}
        tracking.log_metrics(c, rid, scores, step=step)
    npz = tmp / rid / "evolution.npz"  # the name the report reads
    npz.parent.mkdir()
    np.savez(npz, **_pictures(rng))
    c.log_artifact(rid, str(npz), Artifact.EVOLUTION_DIR)
    c.set_terminated(rid, "FAILED" if status == Status.FAILED else "FINISHED")


def make_store(tmp: Path) -> str:
    """The study in a new SQLite store under `tmp`; its URI."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(EXPERIMENT, artifact_location=(tmp / "artifacts").as_uri())
    split = {"train": PATIENTS[:4], "val": PATIENTS[4:5], "test": PATIENTS[5:]}
    parent = c.create_run(
        exp,
        run_name=f"{STUDY} #1",
        tags={Tag.STUDY: STUDY, Tag.ROLE: Role.STUDY, Tag.INVOCATION: "1"}
        | {Tag.SEARCH: "family", Tag.SPLIT: schema.dump_split(split)}
        | {Tag.COMMAND: f"python -m study.run --search family --study {STUDY}"},
    )
    c.log_param(parent.info.run_id, Param.OBJECTIVE, schema.dump_objective("val_iou", "max"))
    number = 0
    for model, loss, count in GROUPS:
        for _ in range(count):
            _trial(c, exp, parent.info.run_id, number, model, loss, tmp)
            number += 1
    c.set_terminated(parent.info.run_id, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_store(tmp_path_factory.mktemp("readable"))


@pytest.fixture(scope="module")
def data(store: str) -> StudyData:
    return load(store, EXPERIMENT, STUDY)


def _hue(colour: str) -> float:
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hls(r, g, b)[0]


def _turn(a: float, b: float) -> float:
    """How far apart two hues are on the colour wheel (0 to 0.5)."""
    d = abs(a - b) % 1
    return min(d, 1 - d)


def test_the_learning_curves_tell_the_trials_of_a_group_apart(data: StudyData) -> None:
    from dashboards.figures import fig_curves

    fig = fig_curves(data)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == sum(n for *_, n in GROUPS)  # every trial logged an epoch
    by_group: dict[str, list] = {}
    for t in lines:
        by_group.setdefault(t.legendgroup, []).append(t)
    assert sorted(by_group) == ["setr / dice", "unet / combo"]
    hues = {}
    for group, traces in by_group.items():
        styles = [(t.line.color, t.line.dash) for t in traces]
        assert len(set(styles)) == len(styles), (group, styles)  # no two trials alike
        assert len({t.line.color for t in traces}) == len(traces)  # each its own shade
        # the group stays one family: one hue, shades of it; a header names it in the legend
        hues[group] = _hue(traces[0].line.color)
        drift = [_turn(_hue(t.line.color), hues[group]) for t in traces]
        assert max(drift) < 0.01, (group, drift)
        assert [t.legendgrouptitle.text for t in traces if t.legendgrouptitle.text] == [group]
        for t in traces:  # the legend entry says which trial: its run name, as logged
            assert re.match(r"#\d+ \w+ \w+ alpha=[\d.]+ lr=[\d.]+e-0\d", t.name), t.name
    assert _turn(hues["unet / combo"], hues["setr / dice"]) > 0.1
    assert fig.layout.legend.groupclick == "toggleitem"  # a click hides one trial, not its group
    # a failed trial alone is dotted; an ASHA stop's x is in its trial's own colour
    dotted = [t.name for t in lines if t.line.dash == "dot"]
    assert dotted == [t.name for t in data.trials if t.status == "failed"] and len(dotted) == 1
    marks = [t for t in fig.data if t.mode == "markers"]
    colours = {t.name: t.line.color for t in lines}
    assert len(marks) == len([t for t in data.trials if t.stopped]) > 0
    assert all(m.marker.color == colours[m.text[0]] for m in marks)


def test_the_lr_axis_labels_every_tick_alike(data: StudyData) -> None:
    from dashboards.figures import fig_hyper

    fig = fig_hyper(data)
    keys = [a.text for a in fig.layout.annotations]
    assert "lr" in keys
    axis = fig.layout[f"xaxis{keys.index('lr') + 1 if keys.index('lr') else ''}"]
    assert axis.type == "log" and axis.tickformat == ".2~e"


def test_the_overlays_name_their_columns(data: StudyData) -> None:
    fig = fig_overlays(data)
    assert COLUMNS == ("FLAIR", "ground truth", "probability")
    texts = [a.text for a in fig.layout.annotations]
    for column in COLUMNS:  # above each slice's three tiles, in each group's picture
        assert texts.count(column) == len(GROUPS) * len(SLICES), texts
    for name in SLICES:
        assert texts.count(name) == len(GROUPS)  # and each slice named above its tiles
    assert fig.layout.height >= 400 * len(GROUPS)


def _measure(page: Path, axis: str) -> Path:
    """A copy of the page that, once every figure is drawn, records on <body> the figures
    whose title reaches past their edge, the tick labels of the hyperparameter panel's
    x axis `axis` (`x`, `x2`...), and the width the overlays are drawn at."""
    probe = """<script>
(function probe() {
  var body = document.body;
  if (!body.getAttribute("data-all-drawn-ms")) { setTimeout(probe, 50); return; }
  var cut = [];
  document.querySelectorAll("div.report-plot").forEach(function (div) {
    var box = div.getBoundingClientRect();
    div.querySelectorAll(".g-gtitle text").forEach(function (t) {
      var r = t.getBoundingClientRect();
      if (r.right > box.right + 1 || r.left < box.left - 1) { cut.push(div.id); }
    });
  });
  body.setAttribute("data-cut-titles", cut.join(" ") || "none");
  var ticks = document.querySelectorAll("#fig-hyperparameters g.AXIStick text");
  body.setAttribute("data-lr-ticks", Array.prototype.map.call(
    ticks, function (t) { return t.textContent; }).join("|"));
  var image = document.querySelector("#fig-overlays image");
  body.setAttribute("data-overlay-width", Math.round(image.getBoundingClientRect().width));
})();
</script></body>"""
    out = page.with_name("measured.html")
    out.write_text(page.read_text().replace("</body>", probe.replace("AXIS", axis)))
    return out


@pytest.mark.slow
def test_in_chromium_titles_fit_ticks_match_and_tiles_are_large(
    store: str, data: StudyData, tmp_path: Path
) -> None:
    page = tmp_path / "r.html"
    page.write_text(build(data)[0])
    n = data.hyperparameters().index("lr") + 1
    shown = render(_measure(page, "x" if n == 1 else f"x{n}"), budget_ms=40000)
    assert shown.console == [], shown.console
    dom = shown.dom
    cut = re.search(r'data-cut-titles="([^"]*)"', dom)
    assert cut and cut.group(1) == "none", cut and cut.group(1)
    ticks = re.search(r'data-lr-ticks="([^"]*)"', dom).group(1).split("|")
    assert len(ticks) >= 2, ticks
    assert all(re.fullmatch(r"[1-9](\.\d+)?e[−-]\d", t) for t in ticks), ticks  # never 100μ
    assert len(ticks) <= 6, ticks  # (2e-4 3e-4 ... 9e-4 overlapped)
    width = int(re.search(r'data-overlay-width="(\d+)"', dom).group(1))
    tiles = 3 * len(SLICES) // 2  # two slices a line: six tiles
    assert width / tiles >= 180, width  # before: twelve tiles on a line, under 100 px each


def _fresh_mode(folder: Path, umask: int) -> int:
    """The mode of a file created with open() under `umask`."""
    old = os.umask(umask)
    try:
        fresh = folder / "fresh"
        fresh.write_text("")
    finally:
        os.umask(old)
    return fresh.stat().st_mode & 0o777


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_report_file_has_the_mode_of_any_file_written_under_the_umask(
    store: str, tmp_path: Path, umask: int
) -> None:
    """The command adds 0o007 to the umask it starts with; report.html, written through a
    temporary file, ends with the mode open() gives under that umask (not mkstemp's 0600),
    also when it replaces an older report."""
    out = tmp_path / "report.html"
    out.write_text("old")
    out.chmod(0o600)
    argv = ["--mlflow-uri", store, "--experiment", EXPERIMENT, "--out", str(out)]
    result = call_cli("dashboards.report", *argv, cwd=REPO, umask=umask)
    assert result.returncode == 0, result.stderr
    mode = out.stat().st_mode & 0o777
    assert mode == _fresh_mode(tmp_path, umask | 0o007)
    assert mode == {0o022: 0o640, 0o077: 0o600}[umask]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
