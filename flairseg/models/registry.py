"""The model registry itself, apart so model modules can import it without cycles.

A model registers with its knobs: `@MODELS.register(name, knobs=[Knob(...)])` (see
flairseg.registry.KnobRegistry).
"""

from __future__ import annotations

import math

from torch import nn

from flairseg.registry import KnobRegistry

LESION_PRIOR = 0.01  # about the share of lesion pixels in the LGG set


MODELS = KnobRegistry("model", fixed=("in_channels", "image_size"))


def init_head(head: nn.Conv2d, prior: float = LESION_PRIOR) -> None:
    """Start the logit bias at the lesion prior (as RetinaNet does for rare classes).

    With a zero bias every pixel starts at p = 0.5 and the first epochs are spent
    unlearning a full-image prediction; at the prior they go to finding lesions.
    """
    nn.init.constant_(head.bias, math.log(prior / (1 - prior)))
