"""The report's "how fast each trial trained" section: training images per second at each
trial's last epoch (all its folds together), one bar per trial coloured by its group, its
peak memory in the hover (device memory on a GPU, the worker's RSS on a CPU) and the
costs a search may weigh (study.front): training seconds and parameters. The metrics are
the trials' own (`images_per_s`, `peak_memory_mb`, `training_seconds`, `parameters`: see
study.trainable); a study run before they were measured says so in their place.
"""

from __future__ import annotations

import plotly.graph_objects as go

from dashboards.figures import COLOURS, empty, finite
from dashboards.load import StudyData

TITLE = "How fast each trial trained: training images per second at its last epoch"
NONE = "no trial logged its throughput (a study run before study.run measured it)"


def fig_throughput(data: StudyData) -> go.Figure:
    """One bar per trial that logged `images_per_s`, coloured by group; or why none."""
    trials = sorted(
        (t for t in data.trials if finite(t.metrics.get("images_per_s"))), key=lambda t: t.number
    )
    if not trials:
        return empty(TITLE, NONE)
    fig = go.Figure()
    for i, group in enumerate(sorted({t.group for t in trials})):
        mine = [t for t in trials if t.group == group]
        fig.add_trace(
            go.Bar(
                x=[t.name for t in mine],
                y=[t.metrics["images_per_s"] for t in mine],
                name=group,
                marker_color=COLOURS[i % len(COLOURS)],
                text=[_hover(t.metrics) for t in mine],
                hovertemplate="%{x}<br>%{y:.1f} images/s<br>%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        title=TITLE, yaxis_title="images / s", xaxis={"categoryorder": "trace"}, height=420
    )
    return fig


def _hover(metrics: dict[str, float]) -> str:
    parts = []
    for key, unit in (("peak_memory_mb", "MB peak"), ("training_seconds", "s training"),
                      ("parameters", "parameters")):  # fmt: skip
        if finite(metrics.get(key)):
            parts.append(f"{metrics[key]:,.0f} {unit}")
    return ", ".join(parts) or "no memory or cost logged"
