"""The report's figures of pictures: probability overlays of the best models, and the evolution.

The panels are drawn by `flairseg.viz` (numpy and Pillow, no torch) from the predictions
the load step read; here they are laid out side by side and embedded as PNG data.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from plotly.subplots import make_subplots

from dashboards.figures import empty
from dashboards.load import EvolutionFrames, StudyData
from flairseg.viz import flair_grey, heat_overlay, truth_overlay


def png(image: Image.Image) -> str:
    """The image as a `data:` URL, so the page needs no file beside it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def panels(frames: EvolutionFrames, epoch_index: int, k: int) -> list[np.ndarray]:
    """FLAIR | ground truth | probability of slice `k` after one epoch, each (H, W, 3) uint8."""
    grey = flair_grey(frames.images[k])
    return [
        grey,
        truth_overlay(grey, frames.masks[k]),
        heat_overlay(grey, frames.prob(epoch_index, k)),
    ]


def canvas(
    rows: list[list[np.ndarray]], labels: list[str] | None = None, gap: int = 2
) -> Image.Image:
    """Panels of one size on a white sheet, row by row, `gap` pixels apart, labels on top."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    top = 12 if labels else 0
    sheet = Image.new("RGB", (cols * (w + gap), top + len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(labels or []):
        draw.text((j * (w + gap) + 2, 0), label, fill="black")
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            sheet.paste(Image.fromarray(panel), (j * (w + gap), top + i * (h + gap)))
    return sheet


def fig_overlays(data: StudyData) -> go.Figure:
    """Each group's best model on the same val slices at its last epoch, a row per group."""
    title = "Probability overlays of each group's best model on the same val slices (FLAIR | ground truth | probability, last epoch)"
    rows = []
    for group, trials in data.groups().items():
        best = data.best_of(trials)
        frames = data.evolution_of(best)
        if best is None or frames is None:
            continue
        row = [p for k in range(len(frames.names)) for p in panels(frames, -1, k)]
        rows.append((f"{group}: {best.name}", row, frames.names))
    if not rows:
        return empty(
            "Probability overlays",
            "no best model with saved predictions (trials failed before an epoch)",
        )
    fig = make_subplots(
        rows=len(rows),
        cols=1,
        subplot_titles=[r[0] for r in rows],
        vertical_spacing=0.12 / max(len(rows), 1),
    )
    for i, (_, row, _) in enumerate(rows):
        fig.add_trace(go.Image(source=png(canvas([row])), hoverinfo="skip"), row=i + 1, col=1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(
        title=title + "<br><sup>slices: " + ", ".join(rows[-1][2]) + "</sup>",
        height=140 + 200 * len(rows),
    )
    return fig


def fig_evolution(data: StudyData) -> go.Figure:
    """The study's best trial on its val slices after each epoch, a slider over the epochs."""
    best = data.best_of(data.trials)
    title = "Training region evolution of the best trial"
    frames = data.evolution_of(best)
    if best is None or frames is None:
        return empty(title, "no trial with saved predictions")
    epochs = frames.epochs
    fig = go.Figure()
    for j, epoch in enumerate(epochs):
        row = [
            heat_overlay(flair_grey(frames.images[k]), frames.prob(j, k))
            for k in range(len(frames.names))
        ]
        fig.add_trace(
            go.Image(
                source=png(canvas([row])),
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
        title=f"{title}: {best.name} (probability heat map on FLAIR, slices {', '.join(frames.names)})",
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
