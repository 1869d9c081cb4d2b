"""Names with markup in MLflow (run names, tags, params, the study and experiment) are shown
as text in every figure of the report: Plotly draws `<a href>`, `<b>`, `<span style>`... of
any label it is given, so the report escapes them once, as it does in its tables."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import render

from dashboards.load import load
from dashboards.page import FIGURES, build
from dashboards.report import main
from study import schema
from study.schema import Artifact, Param, Role, Tag

LINK = '<a href="https://example.com/x">click</a>'
RED = '<span style="color:red">red</span>'
BOLD = "<b>bold</b>"
IMG = "<img src=x onerror=alert(1)>"
EXPERIMENT = f"exp {IMG}"
STUDIES = {None: BOLD, 2: f"{RED} cv"}  # by folds: a plain and a cross-validated study
# what a user's markup leaves in a figure's JSON if it is not escaped
MARKUP = re.compile(r"<(a|b|span|img)\b|</(a|b|span)>")


def label(text: str) -> str:
    """The text as Plotly draws it literally: `<`, `>`, `&` escaped (it decodes no `&quot;`)."""
    return html.escape(text, quote=False)


def _trial(c, exp: str, parent: str, study: str, i: int, folds: int | None, tmp: Path) -> None:
    """Trial `i` of `study`: a hostile run name, model or loss tag, sampled param and slice."""
    from mlflow.entities import Metric
    from mlflow.entities import Param as MlflowParam

    name, model, loss, norm = [(LINK, "unet", RED, IMG), (BOLD, LINK, "dice", "batch")][i]
    status = schema.stopped_status(2) if i else "completed"
    fold_tags = {Tag.FOLDS: str(folds)} if folds else {}
    run = c.create_run(
        exp,
        run_name=name,
        tags={Tag.PARENT: parent, Tag.STUDY: study, Tag.ROLE: Role.TRIAL, Tag.OPTUNA_TRIAL: str(i)}
        | {Tag.MODEL: model, Tag.LOSS: loss, Tag.STATUS: status, Tag.EPOCHS: "2"}
        | {Tag.PLANNED_EPOCHS: "3"}
        | fold_tags,
    )
    rid = run.info.run_id
    params = {"model": model, "loss": loss, "lr": str(0.001 * (i + 1)), "norm": norm}
    params |= {Param.SAMPLED_PREFIX + k: params[k] for k in ("lr", "norm")}
    keys = ["val_iou", "val_dice", "val_pixel_accuracy", "val_mean_accuracy"]
    keys += ["val_iou_std"] if folds else []
    metrics = [
        Metric(k, 0.05 if k.endswith("_std") else 0.2 * step + 0.1 * i, 0, step)
        for step in (1, 2)
        for k in keys
    ]
    c.log_batch(rid, metrics=metrics, params=[MlflowParam(k, v) for k, v in params.items()])
    rng = np.random.default_rng(i)
    npz = tmp / rid / "evolution.npz"  # the name the report reads
    npz.parent.mkdir()
    np.savez(
        npz,
        names=np.array([LINK, "p_1"]),
        epochs=np.array([1, 2]),
        images=rng.integers(0, 255, (2, 8, 8), dtype=np.uint8),
        masks=np.zeros((2, 8, 8), np.uint8),
        probs=rng.integers(0, 255, (2, 2, 8, 8), dtype=np.uint8),
    )
    c.log_artifact(rid, str(npz), Artifact.EVOLUTION_DIR)
    c.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real SQLite store: experiment EXPERIMENT holding both STUDIES, markup everywhere."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("markup")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(EXPERIMENT, artifact_location=(tmp / "artifacts").as_uri())
    for folds, study in STUDIES.items():
        split = {"train": [IMG, "p2"], "val": [BOLD], "test": ["c"]}
        parent = c.create_run(
            exp,
            run_name=f"{study} #1",
            tags={Tag.STUDY: study, Tag.ROLE: Role.STUDY, Tag.INVOCATION: "1"}
            | {Tag.SEARCH: LINK, Tag.COMMAND: RED, Tag.SPLIT: schema.dump_split(split)}
            | {Tag.REGISTRY: f"{STUDIES[folds]} version 3: champion"}
            | ({Tag.FOLDS: str(folds)} if folds else {}),
        )
        c.log_param(parent.info.run_id, Param.OBJECTIVE, schema.dump_objective("val_iou", "max"))
        for i in (0, 1):
            _trial(c, exp, parent.info.run_id, study, i, folds, tmp)
        c.set_terminated(parent.info.run_id, "FINISHED")
    return uri


def specs(page: str) -> dict[str, dict]:
    """Each figure's Plotly JSON, by section, as the page embeds it."""
    found = re.findall(r'<script type="application/json" id="fig-(\w+)-spec">(.*?)</script>', page)
    return {name: json.loads(text) for name, text in found}


def strings(value: object) -> Iterator[str]:
    """Every string in a figure's JSON: names, text, hover, ticks, annotations, titles."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@pytest.mark.parametrize("folds", list(STUDIES), ids=["plain", "cross-validated"])
def test_every_figure_shows_markup_in_names_as_text(store: str, folds: int | None) -> None:
    data = load(store, EXPERIMENT, STUDIES[folds])
    page, _ = build(data)
    figures = specs(page)
    assert list(figures) == [name for name, _ in FIGURES]
    # parcoords tick labels are the one text plotly.js draws as is (never as markup): as logged
    dims = figures["parallel"]["data"][0]["dimensions"]
    ticks = [t for d in dims for t in d.pop("ticktext", [])]
    assert IMG in ticks and f"unet / {RED}" in ticks and f"{LINK} / dice" in ticks
    for name, spec in figures.items():
        live = [s for s in strings(spec) if MARKUP.search(s)]
        assert live == [], (name, live[:3])
    shown = {name: list(strings(spec)) for name, spec in figures.items()}

    def has(name: str, text: str) -> bool:
        return any(label(text) in s for s in shown[name])

    # the names are there, as text: legends, categories, ticks, hovers, subplot titles, cells
    group = f"unet / {label(RED)}"
    assert group in shown["family"] and has("family", LINK)  # a category or tick text
    assert has("hyperparameters", IMG)
    assert has("curves", LINK) and has("curves", BOLD)  # trace names and hover text
    assert has("best", LINK) and has("overlays", LINK) and has("evolution", LINK)
    assert all(has("facts", s) for s in (STUDIES[folds], EXPERIMENT, LINK, RED, IMG, BOLD))
    assert has("facts", f"{STUDIES[folds]} version 3: champion")  # the registry's line
    # escaped once: the page and the tables, which escaped before, are not escaped twice
    assert "&amp;lt;" not in page and "&amp;gt;" not in page
    outside = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # the page's own HTML
    assert not MARKUP.search(outside), outside[:400]
    assert f"<h1>Study {label(STUDIES[folds])}</h1>" in outside


@pytest.mark.slow
def test_the_page_in_chromium_draws_no_user_link_or_style(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Rendered by plotly.js: no <a> to the user's URL, no span styled by the user, and the
    user's markup drawn as visible text."""
    out = tmp_path / "r.html"
    argv = ["--mlflow-uri", store, "--experiment", EXPERIMENT, "--study", BOLD, "--out", str(out)]
    assert main(argv) == 0
    assert f"study {BOLD}," in capsys.readouterr().out  # the terminal shows the name itself
    shown = render(out)
    assert shown.console == [], shown.console
    assert shown.drawn == len(FIGURES)
    dom = re.sub(r"<script.*?</script>", "", shown.dom, flags=re.S)  # plotly.js and the specs
    assert not re.search(r"<a\b[^>]*example\.com", dom)
    assert not re.search(r'<tspan[^>]*style="[^"]*((fill|color):\s*red|font-weight:\s*bold)', dom)
    assert not re.search(r"<img\b", dom)
    assert re.search(r"<text[^>]*>[^<]*&lt;b&gt;bold&lt;/b&gt;", dom)  # drawn, as text
    assert re.search(r"<text[^>]*>&lt;img src=x onerror=alert\(1\)&gt;</text>", dom)
    assert not re.search(r">[^<>]*&amp;(lt|gt|amp);", dom)  # no entity shown as such
    assert re.search(r"<text[^>]*>[^<]*&lt;a href=\"https://example.com/x\"&gt;click", dom)
