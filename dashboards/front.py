"""The report's "quality against cost" section: a search with a cost (study.front).

Every scored trial of the study is a point, its cost across and its objective up (hover:
its name, epochs and model); the Pareto front is drawn through its trials, cheapest first;
the answer the study took is ringed and the rule it was taken by is the subtitle. The data
is the latest invocation's front.json on its parent run (`dashboards.load`), every string
already escaped. A study without a cost says so in the section's place.
"""

from __future__ import annotations

import plotly.graph_objects as go

from dashboards.figures import COLOURS, empty
from dashboards.load import StudyData

TITLE = "Quality against cost: each trial, the Pareto front, and the answer"
NO_COST = (
    "this study has one objective: a search file's `cost:` (training_seconds, model_epochs, "
    "parameters or inference_ms) adds the second"
)


def fig_front(data: StudyData) -> go.Figure:
    """The trials as points, the front as a line, the answer ringed; or why none."""
    made = data.front
    if not made:
        return empty(TITLE, NO_COST)
    objective, cost = made["objective"], made["cost"]
    fig = go.Figure()
    for name, group, style in (
        ("trials", made["points"], {"size": 8, "color": COLOURS[0], "opacity": 0.55}),
        ("the front", made["front"], {"size": 10, "color": COLOURS[1]}),
    ):
        fig.add_trace(
            go.Scatter(
                x=[p["cost"] for p in group],
                y=[p["objective"] for p in group],
                mode="lines+markers" if name == "the front" else "markers",
                name=name,
                marker=style,
                line={"shape": "hv"} if name == "the front" else None,
                text=[f"{p['name']}<br>{p['epochs']} epochs, {p['model']}" for p in group],
                hovertemplate="%{text}<br>" + cost + " %{x:.4g}<br>" + objective + " %{y:.4f}"
                "<extra></extra>",
            )
        )
    chosen = next(p for p in made["front"] if p["trial"] == made["answer"])
    fig.add_trace(
        go.Scatter(
            x=[chosen["cost"]],
            y=[chosen["objective"]],
            mode="markers",
            name=f"the answer: trial #{chosen['trial']}",
            marker={"size": 22, "symbol": "circle-open", "color": "black", "line": {"width": 2}},
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title={"text": f"{TITLE}<br><sub>the answer: {made['rule']}</sub>"},
        xaxis_title=cost,
        yaxis_title=objective,
        height=480,
    )
    return fig
