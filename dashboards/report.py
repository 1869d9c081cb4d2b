"""The study report: `python -m dashboards.report --experiment NAME [--study NAME] [--out report.html]`.

It reads the runs from MLflow (a SQLite store or a server; it imports no training code)
and writes one HTML file that opens offline: plotly.js embedded once, pictures embedded
as PNG data. Sections, each a Plotly figure:

1. the family compared: IoU, Dice, pixel accuracy, mean accuracy of every trial, grouped
   by model and loss, the best of each group marked;
2. the best trial of each group: its config and its val and test scores;
3. the objective against each sampled hyperparameter, and all trials in parallel
   coordinates;
4. learning curves, with the epochs where ASHA stopped trials and the compute saved;
5. probability-mask overlays of each group's best model on the same val slices;
6. the training region evolution of the best trial, a slider over epochs;
7. the study's facts: data, fingerprint, split, image size, trials by status, wall time,
   the command that reproduces it.

A figure with nothing to show says why instead of being empty. Without `--study` the
report covers the experiment's most recent study.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots
from plotly.utils import PlotlyJSONEncoder

from flairseg.errors import ArgumentParser, ConfigError, run_cli

SCORES = ("iou", "dice", "pixel_accuracy", "mean_accuracy")
SCORE_NAMES = {
    "iou": "IoU",
    "dice": "Dice",
    "pixel_accuracy": "pixel accuracy",
    "mean_accuracy": "mean accuracy",
}
HYPER = ("alpha", "lr", "num_cuts", "depth", "width", "dim", "heads", "mlp_dim", "epochs", "norm")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass
class Trial:
    run_id: str
    name: str
    number: int
    model: str
    loss: str
    status: str
    params: dict[str, str]
    sampled: list[str]
    metrics: dict[str, float]
    epochs: int
    planned: int
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def group(self) -> str:
        return f"{self.model} / {self.loss}"

    @property
    def ok(self) -> bool:
        return self.status == "completed" or self.status.startswith("stopped")


@dataclass
class StudyData:
    experiment: str
    study: str
    uri: str
    parents: list[Any]
    trials: list[Trial]
    metric: str
    mode: str

    def best_of(self, trials: list[Trial]) -> Trial | None:
        scored = [t for t in trials if t.ok and _finite(t.metrics.get(self.metric))]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.metrics[self.metric])

    def groups(self) -> dict[str, list[Trial]]:
        out: dict[str, list[Trial]] = {}
        for t in sorted(self.trials, key=lambda t: (t.model, t.loss, t.number)):
            out.setdefault(t.group, []).append(t)
        return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# --------------------------------------------------------------------------- reading MLflow


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _search(c, experiment_id: str, query: str) -> list:
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load(uri: str, experiment: str, study: str | None = None) -> StudyData:
    """Every run of one study from MLflow; an unknown experiment or study fails in one line."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    c = client(uri)
    try:
        exp = c.get_experiment_by_name(experiment)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--mlflow-uri {uri}: cannot read the tracking store ({first[:200]})"
        ) from None
    if exp is None:
        raise ConfigError(f"--experiment {experiment}: no such experiment in {uri}")
    parents = _search(c, exp.experiment_id, "tags.role = 'study'")
    studies = sorted({p.data.tags.get("study", "") for p in parents})
    if study is None:
        if not parents:
            raise ConfigError(f"--experiment {experiment}: holds no study runs (made by study.run)")
        study = max(parents, key=lambda p: p.info.start_time).data.tags["study"]
    elif study not in studies:
        raise ConfigError(
            f"--study {study}: no such study in experiment {experiment}; "
            f"studies there: {', '.join(studies) or 'none'}"
        )
    parents = sorted(
        (p for p in parents if p.data.tags.get("study") == study),
        key=lambda p: int(p.data.tags.get("invocation", 0)),
    )
    objective = parents[-1].data.params.get("objective", "val_iou (max)")
    metric, _, mode = objective.partition(" ")
    mode = mode.strip("()") or "max"
    trials = []
    for run in _search(c, exp.experiment_id, f"tags.study = '{study}' and tags.role = 'trial'"):
        tags, params = run.data.tags, run.data.params
        epochs = int(tags.get("epochs", tags.get("epochs_logged", 0)) or 0)
        trial = Trial(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id[:8],
            number=int(tags.get("optuna_trial", -1)),
            model=tags.get("model", params.get("model", "?")),
            loss=tags.get("loss", params.get("loss", "?")),
            status=tags.get("status", "unknown"),
            params={k: v for k, v in params.items() if not k.startswith("sampled.")},
            sampled=[
                k.removeprefix("sampled.").split(".")[-1]
                for k in params
                if k.startswith("sampled.")
            ],
            metrics=dict(run.data.metrics),
            epochs=epochs,
            planned=int(tags.get("planned_epochs", epochs) or epochs),
        )
        history = c.get_metric_history(run.info.run_id, metric)
        trial.curve = sorted((m.step, m.value) for m in history)
        trials.append(trial)
    trials.sort(key=lambda t: t.number)
    return StudyData(experiment, study, uri, parents, trials, metric, mode)


def _artifact(c, run_id: str, path: str, folder: str) -> Path | None:
    try:
        return Path(c.download_artifacts(run_id, path, folder))
    except Exception:  # an artifact a failed or killed trial never wrote
        return None


def load_evolution(c, run_id: str, folder: str) -> dict[str, np.ndarray] | None:
    path = _artifact(c, run_id, "evolution/evolution.npz", folder)
    if path is None or not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- pictures


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _heat(prob: np.ndarray) -> np.ndarray:
    p = np.clip(prob, 0.0, 1.0)[..., None]
    rgb = np.concatenate(
        [np.clip(3 * p, 0, 1), np.clip(3 * p - 1, 0, 1), np.clip(3 * p - 2, 0, 1)], -1
    )
    return (rgb * 255).astype(np.uint8)


def _blend(base: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return (base * (1 - a) + colour * a).astype(np.uint8)


def _panels(image: np.ndarray, mask: np.ndarray, prob: np.ndarray | None) -> list[np.ndarray]:
    grey = np.repeat(image[..., None], 3, axis=-1)
    truth = _blend(grey, np.array([0, 255, 0], np.uint8), 0.45 * (mask > 0))
    out = [grey, truth]
    if prob is not None:
        out.append(_blend(grey, _heat(prob), 0.75 * prob))
    return out


def _canvas(
    rows: list[list[np.ndarray]], labels: list[str] | None = None, gap: int = 2
) -> Image.Image:
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    top = 12 if labels else 0
    canvas = Image.new("RGB", (cols * (w + gap), top + len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels or []):
        draw.text((j * (w + gap) + 2, 0), label, fill="black")
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            canvas.paste(Image.fromarray(panel), (j * (w + gap), top + i * (h + gap)))
    return canvas


# --------------------------------------------------------------------------- figures


def _empty(title: str, why: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 16}
    )
    fig.update_layout(title=title, height=260, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def fig_family(data: StudyData) -> go.Figure:
    title = "The family compared: final val scores of every trial, by model and loss"
    groups = {g: [t for t in ts if t.ok] for g, ts in data.groups().items()}
    groups = {g: ts for g, ts in groups.items() if ts}
    if not groups:
        return _empty(title, "no trial finished with scores (all failed or were killed)")
    fig = make_subplots(rows=1, cols=4, subplot_titles=[f"val {SCORE_NAMES[s]}" for s in SCORES])
    for gi, (group, trials) in enumerate(groups.items()):
        colour = COLOURS[gi % len(COLOURS)]
        best = data.best_of(trials)
        for si, score in enumerate(SCORES):
            key = f"val_{score}"
            ys = [t.metrics.get(key) for t in trials]
            fig.add_trace(
                go.Box(
                    x=[group] * len(trials),
                    y=ys,
                    name=group,
                    boxpoints="all",
                    jitter=0.4,
                    pointpos=0,
                    marker={"color": colour, "size": 7},
                    line={"color": colour},
                    text=[f"{t.name}<br>{t.status}" for t in trials],
                    hovertemplate="%{text}<br>"
                    + f"val {SCORE_NAMES[score]}"
                    + " %{y:.4f}<extra></extra>",
                    showlegend=si == 0,
                    legendgroup=group,
                ),
                row=1,
                col=si + 1,
            )
            if best is not None:
                fig.add_trace(
                    go.Scatter(
                        x=[group],
                        y=[best.metrics.get(key)],
                        mode="markers",
                        marker={
                            "symbol": "star",
                            "size": 16,
                            "color": "gold",
                            "line": {"color": "black", "width": 1},
                        },
                        name=f"best of {group}",
                        text=[best.name],
                        hovertemplate="best: %{text}<br>%{y:.4f}<extra></extra>",
                        showlegend=False,
                        legendgroup=group,
                    ),
                    row=1,
                    col=si + 1,
                )
    fig.update_yaxes(title_text="score (0-1)", row=1, col=1)
    fig.update_layout(
        title=title + " (star: the best of each group by " + data.metric + ")",
        height=460,
        boxmode="overlay",
    )
    return fig


def fig_best_table(data: StudyData) -> go.Figure:
    title = "The best trial of each group: config and scores (test scored once per group best)"
    rows = []
    for group, trials in data.groups().items():
        best = data.best_of(trials)
        if best is None:
            rows.append([group, "none finished", "", *([""] * 8)])
            continue
        knobs = [
            k
            for k in (
                "alpha",
                "lr",
                "depth",
                "width",
                "norm",
                "num_cuts",
                "dim",
                "heads",
                "mlp_dim",
                "epochs",
            )
            if k in best.params
        ]
        config = ", ".join(f"{k}={_short(best.params[k])}" for k in knobs)
        cells = [group, best.name, config]
        for part in ("val", "test"):
            for score in ("iou", "dice", "pixel_accuracy", "mean_accuracy"):
                value = best.metrics.get(f"{part}_{score}")
                cells.append(f"{value:.4f}" if _finite(value) else "not scored")
        rows.append(cells)
    if not rows:
        return _empty(title, "no trials in this study")
    header = [
        "group",
        "trial",
        "config",
        "val IoU",
        "val Dice",
        "val pixel acc",
        "val mean acc",
        "test IoU",
        "test Dice",
        "test pixel acc",
        "test mean acc",
    ]
    fig = go.Figure(
        go.Table(
            columnwidth=[70, 160, 260] + [60] * 8,
            header={"values": header, "fill_color": "#dde5f0", "align": "left"},
            cells={"values": list(map(list, zip(*rows, strict=True))), "align": "left"},
        )
    )
    fig.update_layout(title=title, height=240 + 45 * len(rows))
    return fig


def _short(value: str) -> str:
    try:
        f = float(value)
    except ValueError:
        return value
    if f.is_integer() and "e" not in value and "." not in value:
        return value
    return f"{f:.3g}"


def _numeric(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def fig_hyper(data: StudyData) -> go.Figure:
    title = f"{data.metric} against each sampled hyperparameter (final epoch of each trial)"
    trials = [t for t in data.trials if t.ok and _finite(t.metrics.get(data.metric))]
    keys = [k for k in HYPER if any(k in t.sampled for t in data.trials)]
    if not trials or not keys:
        why = (
            "no finished trial to plot"
            if not trials
            else "this search samples no hyperparameter (a fixed grid)"
        )
        return _empty(title, why)
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys, shared_yaxes=True)
    groups = list(data.groups())
    for ki, key in enumerate(keys):
        for gi, group in enumerate(groups):
            pts = [t for t in trials if t.group == group and key in t.params]
            if not pts:
                continue
            xs = [t.params[key] for t in pts]
            num = _numeric(xs)
            fig.add_trace(
                go.Scatter(
                    x=num if num is not None else xs,
                    y=[t.metrics[data.metric] for t in pts],
                    mode="markers",
                    name=group,
                    legendgroup=group,
                    showlegend=ki == 0,
                    marker={
                        "color": COLOURS[gi % len(COLOURS)],
                        "size": 9,
                        "symbol": [
                            "x" if t.status.startswith("stopped") else "circle" for t in pts
                        ],
                    },
                    text=[f"{t.name}<br>{t.status}" for t in pts],
                    hovertemplate="%{text}<br>"
                    + key
                    + " %{x}<br>"
                    + data.metric
                    + " %{y:.4f}<extra></extra>",
                ),
                row=1,
                col=ki + 1,
            )
        if key == "lr":
            fig.update_xaxes(type="log", row=1, col=ki + 1)
    fig.update_yaxes(title_text=data.metric, row=1, col=1)
    fig.update_layout(title=title + " (x: stopped early)", height=420)
    return fig


def fig_parallel(data: StudyData) -> go.Figure:
    title = "All trials in parallel coordinates (colour: " + data.metric + ")"
    trials = [t for t in data.trials if t.ok and _finite(t.metrics.get(data.metric))]
    if not trials:
        return _empty(title, "no finished trial to draw")
    dims = []
    groups = sorted({t.group for t in trials})
    dims.append(
        {
            "label": "model / loss",
            "values": [groups.index(t.group) for t in trials],
            "tickvals": list(range(len(groups))),
            "ticktext": groups,
        }
    )
    for key in HYPER:
        if not any(key in t.sampled for t in data.trials):
            continue
        raw = [t.params.get(key, "") for t in trials]
        num = _numeric([v if v not in ("", "None") else "nan" for v in raw])
        if num is not None:
            values = [v if math.isfinite(v) else -1 for v in num]
            if key == "lr":
                dims.append(
                    {
                        "label": "log10 lr",
                        "values": [math.log10(v) if v > 0 else -9 for v in values],
                    }
                )
            else:
                dims.append({"label": key, "values": values})
        else:
            levels = sorted(set(raw))
            dims.append(
                {
                    "label": key,
                    "values": [levels.index(v) for v in raw],
                    "tickvals": list(range(len(levels))),
                    "ticktext": levels,
                }
            )
    dims.append({"label": "epochs run", "values": [t.epochs for t in trials]})
    dims.append({"label": data.metric, "values": [t.metrics[data.metric] for t in trials]})
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": [t.metrics[data.metric] for t in trials],
                "colorscale": "Viridis",
                "showscale": True,
            },
            dimensions=dims,
        )
    )
    fig.update_layout(title=title, height=440)
    return fig


def fig_curves(data: StudyData) -> go.Figure:
    spent = sum(t.epochs for t in data.trials)
    without = sum(t.epochs if not t.ok else t.planned for t in data.trials)
    saved = f"epochs spent {spent} of {without} without early stopping" + (
        f" ({100 * (1 - spent / without):.0f} % saved)" if without else ""
    )
    title = f"Learning curves: {data.metric} per epoch; x marks where ASHA stopped a trial. {saved}"
    with_curves = [t for t in data.trials if t.curve]
    if not with_curves:
        return _empty("Learning curves", "no trial logged an epoch")
    fig = go.Figure()
    groups = list(data.groups())
    for t in with_curves:
        colour = COLOURS[groups.index(t.group) % len(COLOURS)]
        xs, ys = zip(*t.curve, strict=True)
        fig.add_trace(
            go.Scatter(
                x=list(xs),
                y=list(ys),
                mode="lines",
                line={"color": colour, "width": 1.5, "dash": "solid" if t.ok else "dot"},
                name=t.name,
                legendgroup=t.group,
                hovertemplate=t.name
                + "<br>epoch %{x}<br>"
                + data.metric
                + " %{y:.4f}<extra></extra>",
            )
        )
        if t.status.startswith("stopped"):
            fig.add_trace(
                go.Scatter(
                    x=[xs[-1]],
                    y=[ys[-1]],
                    mode="markers",
                    marker={"symbol": "x", "size": 11, "color": colour},
                    showlegend=False,
                    hovertemplate=f"{t.name}<br>stopped by ASHA at epoch {xs[-1]} of {t.planned}<extra></extra>",
                )
            )
    fig.update_layout(title=title, height=480, xaxis_title="epoch", yaxis_title=data.metric)
    return fig


def fig_overlays(data: StudyData, c, folder: str) -> go.Figure:
    title = "Probability overlays of each group's best model on the same val slices (FLAIR | ground truth | probability, last epoch)"
    rows, labels = [], []
    for group, trials in data.groups().items():
        best = data.best_of(trials)
        evo = load_evolution(c, best.run_id, folder) if best else None
        if evo is None or not len(evo["probs"]):
            continue
        row = []
        for k in range(len(evo["names"])):
            row += _panels(
                evo["images"][k], evo["masks"][k], evo["probs"][-1][k].astype(np.float32) / 255
            )
        rows.append((f"{group}: {best.name}", row, [str(n) for n in evo["names"]]))
    if not rows:
        return _empty(
            "Probability overlays",
            "no best model with saved predictions (trials failed before an epoch)",
        )
    fig = make_subplots(
        rows=len(rows),
        cols=1,
        subplot_titles=[r[0] for r in rows],
        vertical_spacing=0.12 / max(len(rows), 1),
    )
    for i, (_, panels, names) in enumerate(rows):
        image = _canvas([panels])
        fig.add_trace(go.Image(source=_png(image), hoverinfo="skip"), row=i + 1, col=1)
        labels = names
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(
        title=title + "<br><sup>slices: " + ", ".join(labels) + "</sup>",
        height=140 + 200 * len(rows),
    )
    return fig


def fig_evolution(data: StudyData, c, folder: str) -> go.Figure:
    best = data.best_of(data.trials)
    title = "Training region evolution of the best trial"
    evo = load_evolution(c, best.run_id, folder) if best else None
    if evo is None or not len(evo["probs"]):
        return _empty(title, "no trial with saved predictions")
    epochs = [int(e) for e in evo["epochs"]]
    fig = go.Figure()
    for j, epoch in enumerate(epochs):
        panels = []
        for k in range(len(evo["names"])):
            panels += _panels(
                evo["images"][k], evo["masks"][k], evo["probs"][j][k].astype(np.float32) / 255
            )[2:]
        fig.add_trace(
            go.Image(
                source=_png(_canvas([panels])),
                visible=j == len(epochs) - 1,
                hoverinfo="skip",
                name=f"epoch {epoch}",
            )
        )
    steps = [
        {
            "method": "update",
            "args": [{"visible": [i == j for i in range(len(epochs))]}],
            "label": str(epoch),
        }
        for j, epoch in enumerate(epochs)
    ]
    fig.update_layout(
        title=f"{title}: {best.name} (probability heat map on FLAIR, slices {', '.join(map(str, evo['names']))})",
        sliders=[
            {
                "active": len(epochs) - 1,
                "currentvalue": {"prefix": "epoch "},
                "steps": steps,
                "pad": {"t": 30},
            }
        ],
        height=380,
        xaxis={"visible": False},
        yaxis={"visible": False},
    )
    return fig


def fig_facts(data: StudyData) -> go.Figure:
    last = data.parents[-1]
    tags = last.data.tags
    statuses: dict[str, int] = {}
    for t in data.trials:
        key = "stopped early" if t.status.startswith("stopped") else t.status
        statuses[key] = statuses.get(key, 0) + 1
    wall = 0.0
    for p in data.parents:
        if p.info.end_time and p.info.start_time:
            wall += (p.info.end_time - p.info.start_time) / 1000
    split = tags.get("split", "")
    try:
        parts = json.loads(split.replace("'", '"'))
        split = "; ".join(f"{k}: {len(v)} patients ({', '.join(v)})" for k, v in parts.items())
    except (ValueError, AttributeError):
        pass
    rows = [
        ("study", f"{data.study} (experiment {data.experiment}, {len(data.parents)} invocations)"),
        ("search", tags.get("search", "?")),
        ("data", tags.get("data", "?")),
        ("data fingerprint", tags.get("data_fingerprint", "?")),
        ("split", split),
        ("image size", f"{tags.get('image_size', '?')} px"),
        ("objective", f"{data.metric} ({data.mode})"),
        ("trials by status", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "none"),
        ("wall time", f"{wall / 60:.1f} min over all invocations"),
        ("reproduce", tags.get("command", "?")),
        ("MLflow", data.uri),
    ]
    fig = go.Figure(
        go.Table(
            columnwidth=[120, 700],
            header={"values": ["fact", "value"], "fill_color": "#dde5f0", "align": "left"},
            cells={
                "values": [[r[0] for r in rows], [html.escape(str(r[1])) for r in rows]],
                "align": "left",
            },
        )
    )
    fig.update_layout(title="The study's facts", height=520)
    return fig


# --------------------------------------------------------------------------- the page

# Figures on the first screen are drawn at once, the rest one after another right after,
# so the page is usable before every figure is drawn. The body records both moments
# (data-first-screen-ms, data-all-drawn-ms) for the benchmark and the browser test.
LOADER = """
(function () {
  var divs = Array.prototype.slice.call(document.querySelectorAll("div.report-plot"));
  function draw(div) {
    if (div.getAttribute("data-drawn")) { return Promise.resolve(); }
    div.setAttribute("data-drawn", "1");
    var spec = JSON.parse(document.getElementById(div.id + "-spec").textContent);
    return Plotly.newPlot(div, spec.data, spec.layout, {displaylogo: false, responsive: true});
  }
  function inView(div) {
    var r = div.getBoundingClientRect();
    return r.top < window.innerHeight && r.bottom > 0;
  }
  Promise.all(divs.filter(inView).map(draw)).then(function () {
    document.body.setAttribute("data-first-screen-ms", Math.round(performance.now()));
    var rest = divs.filter(function (d) { return !d.getAttribute("data-drawn"); });
    (function next() {
      if (!rest.length) {
        document.body.setAttribute("data-all-drawn-ms", Math.round(performance.now()));
        return;
      }
      draw(rest.shift()).then(function () { setTimeout(next, 0); });
    })();
  });
  window.addEventListener("scroll", function () { divs.filter(inView).forEach(draw); });
})();
"""


def build(data: StudyData) -> tuple[str, int]:
    """The HTML page and how many figures it holds."""
    c = client(data.uri)
    with tempfile.TemporaryDirectory(prefix="flairseg-report-") as folder:
        figures = [
            ("family", fig_family(data)),
            ("best", fig_best_table(data)),
            ("hyperparameters", fig_hyper(data)),
            ("parallel", fig_parallel(data)),
            ("curves", fig_curves(data)),
            ("overlays", fig_overlays(data, c, folder)),
            ("evolution", fig_evolution(data, c, folder)),
            ("facts", fig_facts(data)),
        ]
    body = []
    for name, fig in figures:
        fig.update_layout(template="plotly_white", margin={"t": 90})
        spec = json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder).replace("</", "<\\/")
        height = int(fig.layout.height or 450)
        body.append(
            f'<section id="{name}"><div id="fig-{name}" class="plotly-graph-div report-plot" '
            f'style="height:{height}px;width:100%"></div>'
            f'<script type="application/json" id="fig-{name}-spec">{spec}</script></section>'
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(data.study)}: flairseg study report</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:1em 2em;color:#222}} section{{margin-bottom:1.5em}}</style>
</head><body>
<h1>Study {html.escape(data.study)}</h1>
<p>{len(data.trials)} trials of experiment {html.escape(data.experiment)}; objective {html.escape(data.metric)} ({data.mode}).</p>
{"".join(body)}
<script>{LOADER}</script>
</body></html>
"""
    return page, len(figures)


def write(
    uri: str, experiment: str, study: str | None, out: str | os.PathLike
) -> tuple[Path, StudyData]:
    from flairseg.files import atomic_write

    data = load(uri, experiment, study)
    page, _ = build(data)
    with atomic_write(out, "w") as f:
        f.write(page)
    return Path(out), data


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = ArgumentParser(prog="python -m dashboards.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment", required=True, help="the MLflow experiment (a search's name)"
    )
    parser.add_argument(
        "--mlflow-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db"
    )
    parser.add_argument("--study", help="default: the experiment's most recent study")
    parser.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    parser.add_argument(
        "--log-to-run", help="also log the report as an artifact of this MLflow run"
    )
    args = parser.parse_args(argv)
    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a folder; give a file name")
    uri = (
        args.mlflow_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    )
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--mlflow-uri {uri}: no such MLflow database")
    path, data = write(uri, args.experiment, args.study, args.out)
    if args.log_to_run:
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / "report.html"
            copy.write_bytes(path.read_bytes())
            client(uri).log_artifact(args.log_to_run, str(copy))
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB): study {data.study}, {len(data.trials)} trials")
    return 0


if __name__ == "__main__":
    run_cli(main)
