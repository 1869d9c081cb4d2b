"""The report's figures of pictures: probability overlays of the best models, and the evolution.

The panels are drawn by `flairseg.viz` (numpy and Pillow, no torch) from the predictions
the load step read; here they are laid out and embedded as PNG data: the overlays a
slice's three tiles side by side, two slices a line, their names set as text above them;
the evolution a slice per tile.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

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


# The overlays: each slice as three tiles (these columns), two slices side by side, so
# a tile is drawn about 200 px wide on a 1400 px window; each line of tiles has a band
# above it for the slice's name and the columns' names (annotations: text, not pixels).
COLUMNS = ("FLAIR", "ground truth", "probability")
PER_LINE = 2
PLOT_WIDTH = 1300  # px the pictures get on a 1400 px window, for the figure's height
ROW_EXTRA = 50  # px above each group's picture, for its title


@dataclass
class Sheet:
    """One group's picture: the image, and the labels to set on it (x, y, text, size)."""

    image: Image.Image
    labels: list[tuple[float, float, str, int]]


def sheet(tiles: list[list[np.ndarray]], names: list[str], gap: int = 2) -> Sheet:
    """Slices of three tiles each (all of one size), PER_LINE slices a line, on white."""
    h, w = tiles[0][0].shape[:2]
    band, apart = max(h // 3, 12), max(w // 6, 4)  # label band above a line; between slices
    step_x, step_y = 3 * w + 2 * gap + apart, band + h + gap
    lines = -(-len(tiles) // PER_LINE)
    image = Image.new("RGB", (PER_LINE * step_x - apart, lines * step_y), "white")
    labels = []
    for k, (slice_tiles, name) in enumerate(zip(tiles, names, strict=True)):
        x0, y0 = (k % PER_LINE) * step_x, (k // PER_LINE) * step_y + band
        labels.append((x0 + 1.5 * w + gap, y0 - 0.72 * band, name, 11))
        for j, (tile, column) in enumerate(zip(slice_tiles, COLUMNS, strict=True)):
            image.paste(Image.fromarray(tile), (x0 + j * (w + gap), y0))
            labels.append((x0 + j * (w + gap) + w / 2, y0 - 0.27 * band, column, 13))
    return Sheet(image, labels)


def fig_overlays(data: StudyData) -> go.Figure:
    """Each group's best model on the same val slices at its last epoch, a picture per group."""
    title = (
        "Probability overlays of each group's best model on the same val slices, at its last epoch"
    )
    rows = []
    for group, trials in data.groups().items():
        best = data.best_of(trials)
        frames = data.evolution_of(best)
        if best is None or frames is None:
            continue
        tiles = [panels(frames, -1, k) for k in range(len(frames.names))]
        rows.append((f"{group}: {best.name}", sheet(tiles, frames.names)))
    if not rows:
        return empty(
            "Probability overlays",
            "no best model with saved predictions (trials failed before an epoch)",
        )
    tall = max(PLOT_WIDTH * s.image.height / s.image.width for _, s in rows)
    fig = make_subplots(
        rows=len(rows),
        cols=1,
        subplot_titles=[r[0] for r in rows],
        vertical_spacing=ROW_EXTRA / (len(rows) * (tall + ROW_EXTRA)),
    )
    for i, (_, picture) in enumerate(rows):
        fig.add_trace(go.Image(source=png(picture.image), hoverinfo="skip"), row=i + 1, col=1)
        axes = {"xref": f"x{i + 1 if i else ''}", "yref": f"y{i + 1 if i else ''}"}
        for x, y, text, size in picture.labels:
            fig.add_annotation(x=x, y=y, text=text, showarrow=False, font={"size": size}, **axes)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(
        title=title + "<br><sup>heat map of the probability on FLAIR; ground truth in green</sup>",
        height=round(110 + len(rows) * (tall + ROW_EXTRA)),
        margin={"l": 20, "r": 20, "b": 20},
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
        title=f"{title}: {best.name}<br><sup>probability heat map on FLAIR after each epoch; "
        f"slices {', '.join(frames.names)}</sup>",
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
