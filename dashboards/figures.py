"""The report's figures of numbers: scores, the best configs, hyperparameters, curves, facts.

Each builder takes a `StudyData` (loaded beforehand, no MLflow here) and returns one
Plotly figure; a figure with nothing to show says why instead of being empty. The
hyperparameter axes and the model knobs come from the study's params, not from a list.
A cross-validated study's scores also show their spread over the folds (dashboards.spread).
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards import spread
from dashboards.load import StudyData, Trial, finite, plain
from dashboards.styles import COLOURS, trial_styles
from study.schema import Tag

SCORES = ("iou", "dice", "pixel_accuracy", "mean_accuracy")
SCORE_NAMES = {
    "iou": "IoU",
    "dice": "Dice",
    "pixel_accuracy": "pixel accuracy",
    "mean_accuracy": "mean accuracy",
}


def empty(title: str, why: str) -> go.Figure:
    """A figure that says why it has nothing to show."""
    fig = go.Figure()
    fig.add_annotation(
        text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 16}
    )
    fig.update_layout(title=title, height=260, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def fig_family(data: StudyData) -> go.Figure:
    """Box plots of the four val scores of every finished trial by model / loss; a star on each best."""
    title = "The family compared: final val scores of every trial, by model and loss"
    groups = {g: [t for t in ts if t.ok] for g, ts in data.groups().items()}
    groups = {g: ts for g, ts in groups.items() if ts}
    if not groups:
        return empty(title, "no trial finished with scores (all failed or were killed)")
    fig = make_subplots(rows=1, cols=4, subplot_titles=[f"val {SCORE_NAMES[s]}" for s in SCORES])
    for gi, (group, trials) in enumerate(groups.items()):
        colour = COLOURS[gi % len(COLOURS)]
        best = data.best_of(trials)
        for si, score in enumerate(SCORES):
            if data.folds:  # numeric x: each trial beside its box, with its ± 1 sd bar
                label, key = f"val {SCORE_NAMES[score]}", f"val_{score}"
                for trace in spread.family_traces(
                    data.folds, gi, group, trials, best, key, label, colour, si == 0
                ):
                    fig.add_trace(trace, row=1, col=si + 1)
                continue
            fig.add_trace(_scores_box(group, trials, score, colour, si == 0), row=1, col=si + 1)
            if best is not None:
                fig.add_trace(_best_star(group, best, f"val_{score}"), row=1, col=si + 1)
    fig.update_yaxes(title_text="score (0-1)", row=1, col=1)
    fig.update_layout(
        title=title + " (star: the best of each group by " + data.metric + _bars(data) + ")",
        height=460,
        boxmode="overlay",
    )
    if data.folds:
        fig.update_xaxes(tickvals=list(range(len(groups))), ticktext=list(groups))
    return fig


def _bars(data: StudyData) -> str:
    """What a cross-validated study's error bars mean, for a title; empty otherwise."""
    return f"; bars: ± 1 sd over the {data.folds} folds" if data.folds else ""


def _scores_box(group: str, trials: list[Trial], score: str, colour: str, legend: bool) -> go.Box:
    return go.Box(
        x=[group] * len(trials),
        y=[t.metrics.get(f"val_{score}") for t in trials],
        name=group,
        boxpoints="all",
        jitter=0.4,
        pointpos=0,
        marker={"color": colour, "size": 7},
        line={"color": colour},
        text=[f"{t.name}<br>{t.status}" for t in trials],
        hovertemplate="%{text}<br>" + f"val {SCORE_NAMES[score]}" + " %{y:.4f}<extra></extra>",
        showlegend=legend,
        legendgroup=group,
    )


def _best_star(group: str, best: Trial, key: str) -> go.Scatter:
    return go.Scatter(
        x=[group],
        y=[best.metrics.get(key)],
        mode="markers",
        marker=spread.BEST_MARKER,
        name=f"best of {group}",
        text=[best.name],
        hovertemplate="best: %{text}<br>%{y:.4f}<extra></extra>",
        showlegend=False,
        legendgroup=group,
    )


def fig_best_table(data: StudyData) -> go.Figure:
    """The best trial of each group: its config (alpha, lr, its model's knobs, epochs) and scores."""
    title = "The best trial of each group: config and scores (test scored once per group best)"
    rows = []
    for group, trials in data.groups().items():
        best = data.best_of(trials)
        if best is None:
            rows.append([group, "none finished", "", *([""] * 8)])
            continue
        knobs = [k for k in ("alpha", "lr", *best.knobs, "epochs") if k in best.params]
        config = ", ".join(f"{k}={_short(best.params[k])}" for k in knobs)
        cells = [group, best.name, config]
        for part in ("val", "test"):
            for score in SCORES:
                value = best.metrics.get(f"{part}_{score}")
                if data.folds:
                    cells.append(spread.score_cell(best, part, score))
                else:
                    cells.append(f"{value:.4f}" if finite(value) else "not scored")
        rows.append(cells)
    if not rows:
        return empty(title, "no trials in this study")
    header = ["group", "trial", "config"] + [
        f"{part} {name}"
        for part in ("val", "test")
        for name in ("IoU", "Dice", "pixel acc", "mean acc")
    ]
    if data.folds:
        title += (
            f"<br><sup>val: mean ± sd over the {data.folds} folds; test: the {data.folds} "
            "fold models' ensemble, below it one fold model's mean ± sd</sup>"
        )
    fig = go.Figure(
        go.Table(
            columnwidth=[70, 150, 200] + [105] * 8 if data.folds else [70, 160, 260] + [60] * 8,
            header={"values": header, "fill_color": "#dde5f0", "align": "left"},
            cells={"values": list(map(list, zip(*rows, strict=True))), "align": "left"},
        )
    )
    fig.update_layout(title=title, height=240 + (70 if data.folds else 45) * len(rows))
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


def _scored(data: StudyData) -> list[Trial]:
    return [t for t in data.trials if t.ok and finite(t.metrics.get(data.metric))]


def fig_hyper(data: StudyData) -> go.Figure:
    """The objective against each hyperparameter axis, one panel per axis, a colour per group."""
    title = f"{data.metric} against each sampled hyperparameter (final epoch of each trial)"
    trials = _scored(data)
    keys = data.hyperparameters()
    if not trials or not keys:
        why = (
            "no finished trial to plot"
            if not trials
            else "this search samples no hyperparameter (a fixed grid)"
        )
        return empty(title, why)
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys, shared_yaxes=True)
    groups = list(data.groups())
    for ki, key in enumerate(keys):
        for gi, group in enumerate(groups):
            pts = [t for t in trials if t.group == group and key in t.params]
            if pts:
                colour = COLOURS[gi % len(COLOURS)]
                trace = _hyper_points(data.metric, key, pts, group, colour, ki == 0)
                if data.folds:
                    sds = [t.spread(data.metric) for t in pts]
                    notes = [spread.sd_note(t, data.metric, data.folds) for t in pts]
                    trace.update(
                        error_y=spread.error_bars(sds, colour),
                        text=[text + n for text, n in zip(trace.text, notes, strict=True)],
                    )
                fig.add_trace(trace, row=1, col=ki + 1)
        if key == "lr":  # every tick as 2e-4, 5e-4, 1e-3: never 100μ beside 0.001
            fig.update_xaxes(type="log", tickformat=".2~e", nticks=3, row=1, col=ki + 1)
    fig.update_yaxes(title_text=data.metric, row=1, col=1)
    fig.update_layout(title=title + " (x: stopped early" + _bars(data) + ")", height=420)
    return fig


def _hyper_points(
    metric: str, key: str, pts: list[Trial], group: str, colour: str, legend: bool
) -> go.Scatter:
    xs = [t.params[key] for t in pts]
    num = _numeric(xs)
    return go.Scatter(
        x=num if num is not None else xs,
        y=[t.metrics[metric] for t in pts],
        mode="markers",
        name=group,
        legendgroup=group,
        showlegend=legend,
        marker={
            "color": colour,
            "size": 9,
            "symbol": ["x" if t.stopped else "circle" for t in pts],
        },
        text=[f"{t.name}<br>{t.status}" for t in pts],
        hovertemplate="%{text}<br>" + key + " %{x}<br>" + metric + " %{y:.4f}<extra></extra>",
    )


def fig_parallel(data: StudyData) -> go.Figure:
    """Every finished trial as a line through model / loss, each axis, epochs run and the objective."""
    title = "All trials in parallel coordinates (colour: " + data.metric + ")"
    trials = _scored(data)
    if not trials:
        return empty(title, "no finished trial to draw")
    groups = sorted({t.group for t in trials})
    dims = [
        {
            "label": "model / loss",
            "values": [groups.index(t.group) for t in trials],
            "tickvals": list(range(len(groups))),
            "ticktext": [plain(g) for g in groups],
        }
    ]
    dims += [
        _dimension(key, [t.params.get(key, "") for t in trials]) for key in data.hyperparameters()
    ]
    dims.append({"label": "epochs run", "values": [t.epochs for t in trials]})
    dims.append({"label": data.metric, "values": [t.metrics[data.metric] for t in trials]})
    if data.folds:  # the spread beside the mean (a trial without it at 0)
        sds = [t.spread(data.metric) or 0.0 for t in trials]
        dims.append({"label": f"{data.metric} sd over {data.folds} folds", "values": sds})
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


def _dimension(key: str, raw: list[str]) -> dict:
    """One parallel axis: numbers as they are (lr as log10), anything else as levels."""
    num = _numeric([v if v not in ("", "None") else "nan" for v in raw])
    if num is None:
        levels = sorted(set(raw))
        return {
            "label": key,
            "values": [levels.index(v) for v in raw],
            "tickvals": list(range(len(levels))),
            "ticktext": [plain(v) for v in levels],
        }
    values = [v if math.isfinite(v) else -1 for v in num]
    if key == "lr":
        return {"label": "log10 lr", "values": [math.log10(v) if v > 0 else -9 for v in values]}
    return {"label": key, "values": values}


def fig_curves(data: StudyData) -> go.Figure:
    """The objective per epoch of every trial; an x where ASHA stopped one; the epochs saved."""
    spent = sum(t.epochs for t in data.trials)
    without = sum(t.epochs if not t.ok else t.planned for t in data.trials)
    saved = f"epochs spent {spent} of {without} without early stopping" + (
        f" ({100 * (1 - spent / without):.0f} % saved)" if without else ""
    )
    title = f"Learning curves: {data.metric} per epoch; x marks where ASHA stopped a trial. {saved}"
    if data.folds:
        title += f"<br><sup>lines: the mean over the {data.folds} folds; bands: ± 1 sd</sup>"
    with_curves = [t for t in data.trials if t.curve]
    if not with_curves:
        return empty("Learning curves", "no trial logged an epoch")
    fig = go.Figure()
    groups = {g: [t for t in ts if t.curve] for g, ts in data.groups().items()}
    styles = trial_styles(groups, {t.run_id for t in with_curves if not t.ok})
    titled: set[str] = set()
    for t in with_curves:
        colour, dash = styles[t.run_id]
        xs, ys = zip(*t.curve, strict=True)
        fill = spread.band(t, colour) if data.folds else None
        if fill is not None:
            fig.add_trace(fill)
        fig.add_trace(
            go.Scatter(
                x=list(xs),
                y=list(ys),
                mode="lines",
                line={"color": colour, "width": 1.5, "dash": dash},
                name=t.name,
                legendgroup=t.group,
                legendgrouptitle={"text": t.group} if t.group not in titled else None,
                text=[t.name] * len(xs),  # data in text, never in the template
                hovertemplate="%{text}<br>epoch %{x}<br>"
                + data.metric
                + " %{y:.4f}<extra></extra>",
            )
        )
        if t.stopped:
            fig.add_trace(
                go.Scatter(
                    x=[xs[-1]],
                    y=[ys[-1]],
                    mode="markers",
                    marker={"symbol": "x", "size": 11, "color": colour},
                    showlegend=False,
                    text=[t.name],
                    hovertemplate=f"%{{text}}<br>stopped by ASHA at epoch {xs[-1]} of {t.planned}<extra></extra>",
                )
            )
        titled.add(t.group)
    fig.update_layout(
        title=title,
        # tall enough for a legend entry per trial and a header per group (up to ~30)
        height=min(max(480, 170 + 19 * (len(with_curves) + 2 * len(groups))), 900),
        xaxis_title="epoch",
        yaxis_title=data.metric,
        legend={"groupclick": "toggleitem"},  # a click hides one trial, not its group
    )
    return fig


def fig_facts(data: StudyData) -> go.Figure:
    """The study's facts: data, fingerprint, split, trials by status, wall time, how to rerun."""
    tags = data.tags
    statuses: dict[str, int] = {}
    for t in data.trials:
        key = "stopped early" if t.stopped else t.status
        statuses[key] = statuses.get(key, 0) + 1
    split = tags.get(Tag.SPLIT, "")
    if data.split is not None:
        split = "; ".join(f"{k}: {len(v)} patients ({', '.join(v)})" for k, v in data.split.items())
    rows = [
        ("study", f"{data.study} (experiment {data.experiment}, {data.invocations} invocations)"),
        ("search", tags.get(Tag.SEARCH, "?")),
        ("data", tags.get(Tag.DATA, "?")),
        ("data fingerprint", tags.get(Tag.DATA_FINGERPRINT, "?")),
        ("split", split),
        *([("validation", spread.validation_fact(data.folds))] if data.folds else []),
        ("image size", f"{tags.get(Tag.IMAGE_SIZE, '?')} px"),
        ("objective", f"{data.metric} ({data.mode})"),
        ("trials by status", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "none"),
        ("wall time", f"{data.wall_s / 60:.1f} min over all invocations"),
        ("reproduce", tags.get(Tag.COMMAND, "?")),
        ("MLflow", data.uri),
        *([("model registry", tags[Tag.REGISTRY])] if Tag.REGISTRY in tags else []),
    ]
    fig = go.Figure(
        go.Table(
            columnwidth=[120, 700],
            header={"values": ["fact", "value"], "fill_color": "#dde5f0", "align": "left"},
            cells={
                "values": [[r[0] for r in rows], [str(r[1]) for r in rows]],
                "align": "left",
            },
        )
    )
    height = (560 if data.folds else 520) + (40 if Tag.REGISTRY in tags else 0)
    fig.update_layout(title="The study's facts", height=height)
    return fig
