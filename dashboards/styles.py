"""The report's colours: one per group, and for the learning curves a style per trial.

A group keeps its colour's hue across every figure; in the learning curves, where a group
can hold a dozen trials or more, each trial gets its own shade of that hue (dark to light
in trial order) and a dash that cycles, so neighbouring shades differ in dash too. A
failed trial is drawn dotted, a dash no other trial gets.
"""

from __future__ import annotations

import colorsys

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
DASHES = ("solid", "dash", "longdash", "dashdot")
FAILED_DASH = "dot"
LIGHTNESS = (0.22, 0.68)  # darkest and lightest shade: each still reads on white


def group_colour(index: int) -> str:
    """The colour of the group at `index` in the report's group order."""
    return COLOURS[index % len(COLOURS)]


def shades(colour: str, n: int) -> list[str]:
    """`n` distinct shades of `colour`'s hue, dark to light; the colour itself when n is 1."""
    if n <= 1:
        return [colour][:n]
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    hue, _, saturation = colorsys.rgb_to_hls(r, g, b)
    low, high = LIGHTNESS
    out = []
    for k in range(n):
        rgb = colorsys.hls_to_rgb(hue, low + (high - low) * k / (n - 1), saturation)
        out.append("#" + "".join(f"{round(255 * c):02x}" for c in rgb))
    return out


def trial_styles(groups: dict[str, list], failed: set[str]) -> dict[str, tuple[str, str]]:
    """(colour, dash) of each trial's curve by run id: `groups` maps each group to its trials
    in the report's order (objects with a `run_id`); `failed` holds the run ids of failed
    trials. No two trials of a group share a colour."""
    styles = {}
    for gi, trials in enumerate(groups.values()):
        for k, (t, shade) in enumerate(
            zip(trials, shades(group_colour(gi), len(trials)), strict=True)
        ):
            dash = FAILED_DASH if t.run_id in failed else DASHES[k % len(DASHES)]
            styles[t.run_id] = (shade, dash)
    return styles
