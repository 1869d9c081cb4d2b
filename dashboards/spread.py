"""The fold spread of a cross-validated study, as the figures draw it.

In a study run with `--folds K` every score of a trial is the mean over its K fold models
and `<key>_std` (flairseg.cvkeys) their sample sd; on test, the usual key is the fold
models' ensemble and `<key>_single` (± `_single_std`) one model's mean. The figures call
these helpers only when `StudyData.folds` is set, so a report without folds is unchanged.
"""

from __future__ import annotations

import plotly.graph_objects as go

from dashboards.load import Trial, finite
from flairseg.cvkeys import single_key, std_key

# the marker of a group's best trial, with or without its spread
BEST_MARKER = {
    "symbol": "star",
    "size": 16,
    "color": "gold",
    "line": {"color": "black", "width": 1},
}

BAND_ALPHA = 0.15  # the opacity of a learning curve's ± 1 sd band


def error_bars(sds: list[float | None], colour: str) -> dict:
    """Plotly's `error_y`: ± 1 sd per point; a point with no sd gets no bar."""
    return {
        "type": "data",
        "array": sds,
        "visible": True,
        "color": colour,
        "thickness": 1.2,
        "width": 3,
    }


def sd_note(trial: Trial, key: str, folds: int) -> str:
    """`<br>± 0.0123 (sd over 4 folds)` for a hover text; empty if the sd is missing."""
    sd = trial.spread(key)
    return "" if sd is None else f"<br>± {sd:.4f} (sd over {folds} folds)"


def offsets(n: int, width: float = 0.5) -> list[float]:
    """Where n points sit around their group's centre, evenly, in trial order."""
    if n < 2:
        return [0.0] * n
    return [-width / 2 + width * i / (n - 1) for i in range(n)]


def family_traces(
    data_folds: int,
    at: int,
    group: str,
    trials: list[Trial],
    best: Trial | None,
    key: str,
    label: str,
    colour: str,
    legend: bool,
) -> list[go.BaseTraceType]:
    """One group's box of a score at x = `at`, its trials beside it with ± 1 sd bars and
    the star on its best, also with its bar (the axis is numeric: a box's own points carry
    no error bars)."""
    xs = [at + dx for dx in offsets(len(trials))]
    ys = [t.metrics.get(key) for t in trials]
    box = go.Box(
        x=[at] * len(trials),
        y=ys,
        name=group,
        boxpoints=False,
        line={"color": colour},
        hoverinfo="y",
        showlegend=legend,
        legendgroup=group,
    )
    points = go.Scatter(
        x=xs,
        y=ys,
        mode="markers",
        marker={"color": colour, "size": 7},
        error_y=error_bars([t.spread(key) for t in trials], colour),
        text=[f"{t.name}<br>{t.status}{sd_note(t, key, data_folds)}" for t in trials],
        hovertemplate="%{text}<br>" + label + " %{y:.4f}<extra></extra>",
        showlegend=False,
        legendgroup=group,
    )
    if best is None:
        return [box, points]
    star = go.Scatter(
        x=[xs[trials.index(best)]],
        y=[best.metrics.get(key)],
        mode="markers",
        marker=BEST_MARKER,
        error_y=error_bars([best.spread(key)], "black"),
        name=f"best of {group}",
        text=[best.name + sd_note(best, key, data_folds)],
        hovertemplate="best: %{text}<br>%{y:.4f}<extra></extra>",
        showlegend=False,
        legendgroup=group,
    )
    return [box, points, star]


def score_cell(trial: Trial, part: str, score: str) -> str:
    """A best-table cell: val `mean ± sd`; test the ensemble, below it one model's mean ± sd
    (3 decimals: the spread over a few folds makes a 4th meaningless, and it fits a column)."""
    key = f"{part}_{score}"
    value = trial.metrics.get(key)
    if not finite(value):
        return "not scored"
    if part != "test":
        sd = trial.spread(key)
        return f"{value:.3f}" + ("" if sd is None else f" ± {sd:.3f}")
    text = f"{value:.3f} ensemble"
    single = trial.metrics.get(single_key(key))
    if finite(single):  # below it, one fold model's mean ± sd (two short lines fit a column)
        sd = trial.metrics.get(std_key(single_key(key)))
        text += f"<br>{single:.3f}" + (f" ± {sd:.3f}" if finite(sd) else "")
    return text


def band(trial: Trial, colour: str) -> go.Scatter | None:
    """The learning curve's ± 1 sd band over the folds, a translucent fill; None without sd."""
    sds = dict(trial.curve_std)
    pts = [(x, y, sds[x]) for x, y in trial.curve if x in sds and finite(sds[x])]
    if not pts:
        return None
    xs = [x for x, _, _ in pts]
    upper = [y + sd for _, y, sd in pts]
    lower = [y - sd for _, y, sd in pts]
    return go.Scatter(
        x=xs + xs[::-1],
        y=upper + lower[::-1],
        mode="lines",
        fill="toself",
        fillcolor=rgba(colour, BAND_ALPHA),
        line={"width": 0, "color": colour},
        hoverinfo="skip",
        showlegend=False,
        legendgroup=trial.group,
        name=f"{trial.name} ± sd",
    )


def rgba(colour: str, alpha: float) -> str:
    """`#1f77b4` as `rgba(31, 119, 180, 0.15)`."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def validation_fact(folds: int) -> str:
    """The facts table's `validation` row of a cross-validated study."""
    return (
        f"patient {folds}-fold cross-validation: every score is the mean over the {folds} "
        f"fold models (± sd); test: the ensemble of the best config's {folds} fold models "
        "(and one fold model's mean ± sd)"
    )
