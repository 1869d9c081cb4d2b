"""The report's answer section: the study's finalists, retrained to confirm their scores
(K folds or R seeds each), and the winner compared paired with each runner-up.

Two panels: above, the per-patient volume Dice of each finalist, patients ordered by the
winner's score, the winner's stars over the others' markers; below, the winner minus each
runner-up, per metric (volume Dice, IoU): the mean paired difference over the patients with
its confidence interval as error bars, a line at zero, and the verdict and Wilcoxon p beside
it. The title names the winner and, in words, its verdict against the runner-up (the
finalist next best by the confirmed objective). A study run with `--no-confirm` (its parent
tagged `flairseg.confirmed` = "false") says its answer is unconfirmed instead; one without
the artifact says so. The data is the parent run's comparison.json, read by
`dashboards.load` into `StudyData.answer` with every string already escaped.
"""

from __future__ import annotations

import textwrap
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.figures import COLOURS, empty
from dashboards.load import StudyData, finite, label
from study.schema import Tag

TITLE = "The answer: finalists confirmed and compared"
CONFIRMED = Tag.CONFIRMED  # the parent's tag; "false": study.run ran with --no-confirm
SCORE = "volume_dice"  # the per-patient score drawn above
NAMES = {"volume_dice": "volume Dice", "iou": "IoU"}
WORDS = {"better": "better than", "within noise": "within noise of", "worse": "worse than"}
NONE = (
    "no comparison: the study's latest invocation logged no comparison.json (it ran before "
    "study.run confirmed its finalists, or it ended before they were compared)"
)
MODES = ("max", "min")
OFFSET = 0.18  # each metric's row around its runner-up's, in the lower panel


def fig_answer(data: StudyData) -> go.Figure:
    """The finalists per patient and the winner's paired differences, or why there are none."""
    if data.front:  # a search with a cost answers by its front (dashboards.front)
        chosen = data.front["answer"]
        return empty(TITLE, _wrap(
            f"This study weighs {data.front['objective']} against {data.front['cost']}: its "
            f"answer is trial #{chosen}, {data.front['rule']} (see the quality against cost "
            "below); no finalists are confirmed for a trade-off."
        ))  # fmt: skip
    if str(data.tags.get(CONFIRMED, "")).strip().lower() == "false":
        return empty(TITLE, _wrap(unconfirmed(data)))
    record = data.answer
    if record is None:
        return empty(TITLE, _wrap(NONE))
    finalists = record["finalists"]
    winner = next(f for f in finalists if f["trial"] == record["winner"])
    others = [f for f in finalists if f is not winner]
    found = record.get("metrics")
    metrics = [m for m in found if isinstance(m, str)] if isinstance(found, list) else []
    metrics = metrics or list(NAMES)
    confidence = _num(record.get("confidence"), 0.95)
    level = f"{100 * (confidence if 0 < confidence < 1 else 0.95):g} % CI"
    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.5, 0.5],
        vertical_spacing=0.22,
        subplot_titles=[
            f"per-patient {NAMES[SCORE]} of each finalist (patients by the winner's score)",
            f"the winner minus each runner-up: mean paired difference over the patients, {level}",
        ],
    )
    for trace in _patients(winner, others):
        fig.add_trace(trace, row=1, col=1)
    fig.update_xaxes(type="category", title_text="patient", row=1, col=1)
    fig.update_yaxes(title_text=NAMES[SCORE], range=[0, 1.05], row=1, col=1)
    drawn = _differences(record, winner, others, metrics, level)
    for trace in drawn:
        fig.add_trace(trace, row=2, col=1)
    fig.add_vline(x=0, line={"color": "#555", "dash": "dash", "width": 1}, row=2, col=1)
    fig.update_xaxes(title_text="winner minus runner-up (0: no difference)", row=2, col=1)
    fig.update_yaxes(
        tickvals=list(range(len(others))),
        ticktext=[_name(f) for f in others],
        range=[max(len(others), 1) - 0.4, -0.6],  # the first runner-up on top
        ticksuffix=" ",
        row=2,
        col=1,
    )
    if not drawn:  # in paper coordinates: the panel's axes, holding no trace, are hidden
        low, high = fig.layout.yaxis2.domain
        why = "no runner-up to compare it with" if not others else "no paired difference logged"
        fig.add_annotation(
            text=why, showarrow=False, x=0.5, y=(low + high) / 2, xref="paper", yref="paper"
        )
    fig.update_layout(
        title=_title(record, winner, others, data.mode, metrics, level),
        height=560 + 70 * max(len(others), 1),
    )
    return fig


def unconfirmed(data: StudyData) -> str:
    """What a study run with --no-confirm has in place of the answer: the search's best."""
    best = data.best_of(data.trials)
    pick = (
        "no trial finished with scores"
        if best is None
        else f"its answer is the search's best trial, {best.name} "
        f"({data.metric} {best.metrics[data.metric]:.4f}), never retrained to confirm its "
        "score nor compared paired with the runners-up"
    )
    return f"This study's answer is unconfirmed (run with --no-confirm): {pick}."


def runner_up(winner: dict, others: list[dict], mode: str) -> dict | None:
    """The finalist next best by the confirmed objective; the first other one if none has one."""
    scored = [f for f in others if _num(f.get("objective")) is not None]
    if not scored:
        return others[0] if others else None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda f: _num(f.get("objective")))


def _patients(winner: dict, others: list[dict]) -> list[go.Scatter]:
    """One marker trace per finalist over the patients, the winner's drawn last (on top)."""
    names = {p for f in (winner, *others) for p in f["patients"]}
    ranked = sorted(names, key=lambda p: (-_num(_score(winner, p), -1e9), p))  # none last
    traces = []
    for i, f in enumerate([*others, winner]):
        won = f is winner
        colour = "#111111" if won else COLOURS[i % len(COLOURS)]
        name = _name(f)
        traces.append(
            go.Scatter(
                x=ranked,
                y=[_score(f, p) for p in ranked],
                mode="markers",
                name=f"{name} (winner)" if won else name,
                legendrank=1 if won else 2 + i,
                legendgroup="finalists",
                legendgrouptitle={"text": "finalists (above)"},
                marker={
                    "color": colour,
                    "size": 13 if won else 8,
                    "symbol": "star" if won else "circle",
                    "opacity": 1.0 if won else 0.75,
                },
                text=[f"{name}<br>{_confirmed(f)}"] * len(ranked),
                hovertemplate="%{text}<br>patient %{x}<br>"
                + NAMES[SCORE]
                + " %{y:.3f}<extra></extra>",
            )
        )
    return traces


def _differences(
    record: dict, winner: dict, others: list[dict], metrics: list[str], level: str
) -> list[go.Scatter]:
    """Per metric, the winner minus each runner-up with its CI, verdict and p beside it."""
    found = {(c.get("trial"), c.get("metric")): c for c in record["comparisons"]}
    traces = []
    for m, metric in enumerate(metrics):
        points = [
            (i, found[f["trial"], metric], f)
            for i, f in enumerate(others)
            if (f["trial"], metric) in found
        ]
        points = [(i, c, f) for i, c, f in points if _num(c.get("mean_difference")) is not None]
        if not points:
            continue
        means = [_num(c["mean_difference"]) for _, c, _ in points]
        lows = [_num(c.get("ci_low"), mean) for (_, c, _), mean in zip(points, means, strict=True)]
        highs = [_num(c.get("ci_high"), mu) for (_, c, _), mu in zip(points, means, strict=True)]
        traces.append(
            go.Scatter(
                x=means,
                y=[i + _offset(m, len(metrics)) for i, _, _ in points],
                mode="markers+text",
                name=f"difference in {NAMES.get(metric, metric)}",
                legendrank=100 + m,
                legendgroup="differences",
                legendgrouptitle={"text": "winner minus runner-up (below)"},
                marker={"color": _colour(m), "size": 10, "symbol": "diamond"},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [h - mu for h, mu in zip(highs, means, strict=True)],
                    "arrayminus": [mu - lo for lo, mu in zip(lows, means, strict=True)],
                    "color": _colour(m),
                },
                text=[f"{_verdict(c)}, p {_p(c.get('p_value'))}" for _, c, _ in points],
                textposition="top center",
                customdata=[
                    _difference(_name(winner), _name(f), c, metric, level) for _, c, f in points
                ],
                hovertemplate="%{customdata}<extra></extra>",
            )
        )
    return traces


def _title(
    record: dict, winner: dict, others: list[dict], mode: str, metrics: list[str], level: str
) -> str:
    """The winner and its confirmed objective; below, its verdict against the runner-up."""
    first = f"{TITLE}. Winner: {_name(winner)}, {_confirmed(winner, record)}"
    second = runner_up(winner, others, record["mode"] if record.get("mode") in MODES else mode)
    if second is None:
        return f"{first}<br><sup>the only finalist: nothing to compare it with</sup>"
    metric = metrics[0]
    found = [
        c
        for c in record["comparisons"]
        if c.get("trial") == second["trial"] and c.get("metric") == metric
    ]
    against = f"the runner-up {_name(second)}"
    if not found or _num(found[0].get("mean_difference")) is None:
        return f"{first}<br><sup>no paired comparison with {against} was logged</sup>"
    c = found[0]
    words = WORDS.get(c.get("verdict"), f"{_verdict(c)} against")
    return (
        f"{first}<br><sup>the winner is {words} {against} in per-patient "
        f"{NAMES.get(metric, metric)} ({_interval(c, level)}, Wilcoxon p {_p(c.get('p_value'))})"
        "</sup>"
    )


def _confirmed(f: dict, record: dict | None = None) -> str:
    """A finalist's confirmed objective (mean ± sd), how it was confirmed, its search score."""
    objective, sd = _num(f.get("objective")), _num(f.get("objective_std"))
    name = (record or {}).get("objective", "objective")
    text = f"{name} {objective:.4f}" if objective is not None else f"{name} not logged"
    text += f" ± {sd:.4f}" if sd is not None and objective is not None else ""
    if record is not None:
        replicas, method = record.get("replicas"), record.get("method")
        if finite(replicas) and method in ("folds", "seeds"):
            text += f" over {int(replicas)} {'folds' if method == 'folds' else 'seeds'}"
    search = _num(f.get("search_value"))
    return text + (f" (search {search:.4f})" if search is not None else "")


def _difference(winner: str, other: str, c: dict, metric: str, level: str) -> str:
    """The hover of one paired difference."""
    n = c.get("n")
    patients = f", {int(n)} patients" if finite(n) else ""
    return (
        f"{winner} minus {other}<br>{NAMES.get(metric, metric)} {_interval(c, level)}"
        f"<br>Wilcoxon p {_p(c.get('p_value'))}{patients}: {_verdict(c)}"
    )


def _interval(c: dict, level: str) -> str:
    mean, low, high = (_num(c.get(k)) for k in ("mean_difference", "ci_low", "ci_high"))
    ci = f", {level} [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else ""
    return f"{mean:+.3f}{ci}"


def _offset(m: int, count: int) -> float:
    """Metric `m`'s place around its runner-up's row: the first on top (the axis is reversed)."""
    return -OFFSET * (count - 1 - 2 * m) / max(count - 1, 1)


def _colour(m: int) -> str:
    """Metric `m`'s colour: from the end of the palette, unlike the finalists' above."""
    return COLOURS[-1 - m % len(COLOURS)]


def _verdict(c: dict) -> str:
    v = c.get("verdict")
    return v if isinstance(v, str) and v else "no verdict"


def _p(value: Any) -> str:
    """A p-value as the console prints it (study.compare); `<` escaped as every label."""
    p = _num(value)
    if p is None:
        return "not logged"
    return label("< 0.001") if p < 0.001 else f"{p:.2f}" if p >= 0.01 else f"{p:.3f}"


def _name(f: dict) -> str:
    text = f.get("label")
    return text if isinstance(text, str) and text.strip() else f"#{f['trial']}"


def _score(f: dict, patient: str) -> float | None:
    scores = f["patients"].get(patient)
    return _num(scores.get(SCORE)) if isinstance(scores, dict) else None


def _num(value: Any, default: float | None = None) -> float | None:
    """A finite number from the record (never a bool), else `default`."""
    return float(value) if finite(value) and not isinstance(value, bool) else default


def _wrap(text: str) -> str:
    """A long reason in lines that fit the page (an escaped entity is never split)."""
    lines = textwrap.wrap(text, 110, break_long_words=False, break_on_hyphens=False)
    return "<br>".join(lines)
