"""The report's page: every figure as JSON in one self-contained HTML file, drawn lazily.

plotly.js is embedded once and pictures are PNG data, so the file opens offline. Each
figure's spec sits in a JSON script beside its div and is drawn by the small loader
below, which records when the first screen and the whole page were drawn. Names are
put in as they are: `dashboards.load` holds every string already escaped (`label`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.utils import PlotlyJSONEncoder

from dashboards.answer import fig_answer
from dashboards.figures import (
    fig_best_table,
    fig_curves,
    fig_facts,
    fig_family,
    fig_hyper,
    fig_parallel,
)
from dashboards.front import fig_front
from dashboards.importance import fig_importance
from dashboards.load import StudyData, load
from dashboards.pictures import fig_evolution, fig_overlays
from dashboards.throughput import fig_throughput

# The sections in page order: the id of each figure's <section> and its builder. The answer
# (the confirmed finalists compared) first: it is what a reader of the study wants first.
FIGURES: tuple[tuple[str, Callable[[StudyData], go.Figure]], ...] = (
    ("answer", fig_answer),
    ("family", fig_family),
    ("front", fig_front),
    ("best", fig_best_table),
    ("hyperparameters", fig_hyper),
    ("parallel", fig_parallel),
    ("importance", fig_importance),
    ("curves", fig_curves),
    ("throughput", fig_throughput),
    ("overlays", fig_overlays),
    ("evolution", fig_evolution),
    ("facts", fig_facts),
)

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


def section(name: str, fig: go.Figure) -> str:
    """One figure as a <section>: an empty div and its spec as JSON, for the loader."""
    fig.update_layout(template="plotly_white", margin={"t": 90})
    spec = json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder).replace("</", "<\\/")
    height = int(fig.layout.height or 450)
    return (
        f'<section id="{name}"><div id="fig-{name}" class="plotly-graph-div report-plot" '
        f'style="height:{height}px;width:100%"></div>'
        f'<script type="application/json" id="fig-{name}-spec">{spec}</script></section>'
    )


def build(data: StudyData) -> tuple[str, int]:
    """The HTML page and how many figures it holds."""
    body = [section(name, builder(data)) for name, builder in FIGURES]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{data.study}: flairseg study report</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:1em 2em;color:#222}} section{{margin-bottom:1.5em}}</style>
</head><body>
<h1>Study {data.study}</h1>
<p>{len(data.trials)} trials of experiment {data.experiment}; objective {data.metric} ({data.mode}){_folds(data)}.</p>
{"".join(body)}
<script>{LOADER}</script>
</body></html>
"""
    return page, len(body)


def _folds(data: StudyData) -> str:
    """How a cross-validated study scores, for the page's first line; empty otherwise."""
    if not data.folds:
        return ""
    return f", patient {data.folds}-fold cross-validated (every score the fold mean ± sd)"


def write(
    uri: str, experiment: str, study: str | None, out: str | os.PathLike
) -> tuple[Path, StudyData]:
    """Load the study from MLflow and write its report to `out` (atomically)."""
    from flairseg.files import atomic_write

    data = load(uri, experiment, study)
    page, _ = build(data)
    with atomic_write(out, "w") as f:
        f.write(page)
    return Path(out), data
