"""Pictures of predictions: the seed's probability-mask overlays, drawn with Pillow alone.

An overlay is three panels side by side, each the size of the slice: the FLAIR
channel in grey; the ground truth in green over it (or a note that there is none);
the predicted probability as a heat map over it, with the 0.5 contour in cyan.

Needs numpy and Pillow only (no torch), so the report in `dashboards` draws with it too.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

FLAIR = 1  # channel index of FLAIR in the kaggle_3m RGB slices (pre-contrast, FLAIR, post)
TRUTH_GREEN = np.array([0, 255, 0], np.uint8)


def flair_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 slice -> (H, W, 3) uint8 grey of its FLAIR channel."""
    flair = image[..., FLAIR] if image.ndim == 3 else image
    return np.repeat(flair[..., None], 3, axis=-1)


def heat(prob: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white heat colour map: (H, W) in [0, 1] -> (H, W, 3) uint8."""
    p = np.clip(prob, 0.0, 1.0)[..., None]
    rgb = np.concatenate(
        [np.clip(3 * p, 0, 1), np.clip(3 * p - 1, 0, 1), np.clip(3 * p - 2, 0, 1)], axis=-1
    )
    return (rgb * 255).astype(np.uint8)


def blend(base: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`colour` over `base` (both (H, W, 3) uint8, or a colour (3,)) with per-pixel `alpha` (H, W)."""
    a = alpha[..., None]
    return (base * (1 - a) + colour * a).astype(np.uint8)


def truth_overlay(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The ground truth in green over the grey slice: (H, W, 3) uint8, mask (H, W) {0,1}."""
    return blend(grey, TRUTH_GREEN, 0.45 * (mask > 0))


def heat_overlay(grey: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The probability (H, W) in [0, 1] as a heat map over the grey slice, opaque where sure."""
    p = np.clip(prob, 0, 1)
    return blend(grey, heat(p), 0.75 * p)


def contour(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = (
        mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    )
    return mask & ~inner


def overlay_panels(
    image: np.ndarray, prob: np.ndarray, mask: np.ndarray | None = None
) -> Image.Image:
    """Input | ground truth | probability: image (H, W, 3) uint8, prob (H, W) float, mask (H, W) {0,1}."""
    grey = flair_grey(image)
    h, w = prob.shape
    truth = truth_overlay(grey, mask) if mask is not None else grey // 3
    heat_panel = heat_overlay(grey, prob)
    heat_panel[contour(prob >= 0.5)] = (0, 255, 255)
    strip = 14
    canvas = Image.new("RGB", (3 * w, h + strip), "black")
    for i, panel in enumerate((grey, truth, heat_panel)):
        canvas.paste(Image.fromarray(panel), (i * w, strip))
    draw = ImageDraw.Draw(canvas)
    labels = ("FLAIR", "ground truth" if mask is not None else "no ground truth", "probability")
    for i, label in enumerate(labels):
        draw.text((i * w + 3, 1), label, fill="white")
    return canvas
