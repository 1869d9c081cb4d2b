"""The report's "what mattered" section: which hyperparameters drove the objective, and
which the cost, as study.importance ranked them (Optuna's fANOVA) at the end of the
study's latest invocation.

Two horizontal bar charts side by side, the largest share on top: each param's share of
the objective's variance, and of the variance of the epochs the trials reached (the
cost: ASHA's stops, or a sampled epoch budget). A ranking the study has none of says why
in its place (too few trials, a grid search...). The data comes from `dashboards.load`:
the parent run's `importance.*` and `cost_importance.*` metrics, and the reasons from its
importance.json, every name and reason already escaped.
"""

from __future__ import annotations

import textwrap

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.figures import COLOURS, empty
from dashboards.load import StudyData

TITLE = "What mattered: each hyperparameter's share of what varied across the trials (fANOVA)"
# the parts as study.importance names them; the cost is the epochs each trial reached
PARTS = ("objective", "cost")
NOT_COMPUTED = (
    "not computed: the study's latest invocation logged no importance "
    "(it ended early, or ran before study.run computed it)"
)


def fig_importance(data: StudyData) -> go.Figure:
    """Both rankings as horizontal bars, or why the study has none."""
    found = data.importance
    if found is None:
        return empty(TITLE, NOT_COMPUTED)
    rankings = [found.rankings.get(part, {}) for part in PARTS]
    whys = [found.why.get(part, "no ranking") for part in PARTS]
    if not any(rankings):
        why = whys[0] if whys[0] == whys[1] else f"objective: {whys[0]}; cost: {whys[1]}"
        return empty(TITLE, f"no ranking: {why}")
    titles = [f"the objective, {data.metric}", "the cost, epochs each trial reached"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.18)
    for col, (ranking, why) in enumerate(zip(rankings, whys, strict=True), start=1):
        if ranking:
            fig.add_trace(_bars(ranking, COLOURS[col - 1]), row=1, col=col)
            fig.update_xaxes(title_text="share (sums to 1)", range=[0, 1.1], row=1, col=col)
            fig.update_yaxes(type="category", ticksuffix=" ", row=1, col=col)  # names, not numbers
            continue
        # in paper coordinates: a reference to this subplot's axis, which holds no trace,
        # put the text over the first subplot in Chromium
        low, high = fig.get_subplot(1, col).xaxis.domain
        fig.add_annotation(
            text="<br>".join(textwrap.wrap(f"no ranking: {why}", 50)),
            showarrow=False,
            x=(low + high) / 2,
            xanchor="center",
            y=0.5,
            xref="paper",
            yref="paper",
        )
        fig.update_xaxes(visible=False, row=1, col=col)
        fig.update_yaxes(visible=False, row=1, col=col)
    rows = max(len(r) for r in rankings)
    fig.update_layout(title=TITLE, height=260 + 32 * rows, showlegend=False)
    return fig


def _bars(ranking: dict[str, float], colour: str) -> go.Bar:
    """One ranking, largest on top (Plotly draws the first category at the bottom)."""
    names = list(ranking)[::-1]
    shares = [ranking[n] for n in names]
    return go.Bar(
        x=shares,
        y=names,
        orientation="h",
        marker={"color": colour},
        text=[f"{v:.2f}" for v in shares],
        textposition="outside",
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    )
