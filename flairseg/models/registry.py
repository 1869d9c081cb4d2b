"""The model registry itself, apart so model modules can import it without cycles."""

import math

from torch import nn

from flairseg.registry import Registry

MODELS: Registry = Registry("model")

LESION_PRIOR = 0.01  # about the share of lesion pixels in the LGG set


def init_head(head: nn.Conv2d, prior: float = LESION_PRIOR) -> None:
    """Start the logit bias at the lesion prior (as RetinaNet does for rare classes).

    With a zero bias every pixel starts at p = 0.5 and the first epochs are spent
    unlearning a full-image prediction; at the prior they go to finding lesions.
    """
    nn.init.constant_(head.bias, math.log(prior / (1 - prior)))
