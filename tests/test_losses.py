"""Losses against hand-computed values, and every registered loss trains."""

from __future__ import annotations

import math

import pytest
import torch

from flairseg.config import TrainConfig
from flairseg.errors import ConfigError
from flairseg.losses import LOSSES, ComboLoss, build_loss, soft_dice_loss

BIG = 30.0  # a logit whose sigmoid is 1 to within 1e-13


def test_soft_dice_by_hand() -> None:
    p = torch.tensor([1.0, 1, 0, 0])
    t = torch.tensor([1.0, 0, 0, 0])
    assert float(soft_dice_loss(p, t, smooth=0)) == pytest.approx(1 - 2 / 3)
    assert float(soft_dice_loss(p, t, smooth=1)) == pytest.approx(1 - 3 / 4)
    assert float(soft_dice_loss(torch.full((4,), 0.5), t, smooth=0)) == pytest.approx(1 - 1 / 3)


def test_empty_and_full_masks() -> None:
    empty = torch.zeros(1, 1, 4, 4)
    full = torch.ones(1, 1, 4, 4)
    dice = build_loss("dice")
    assert float(dice(torch.full_like(empty, -BIG), empty)) == pytest.approx(0, abs=1e-6)
    assert float(dice(torch.full_like(full, BIG), full)) == pytest.approx(0, abs=1e-6)
    assert float(dice(torch.full_like(full, -BIG), full)) == pytest.approx(1 - 1 / 17, abs=1e-6)


def test_bce_by_hand_and_stable() -> None:
    bce = build_loss("bce")
    t = torch.tensor([1.0, 0.0])
    assert float(bce(torch.zeros(2), t)) == pytest.approx(math.log(2))
    assert float(bce(torch.tensor([2.0, -1.0]), t)) == pytest.approx(
        (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    )
    assert math.isfinite(float(bce(torch.tensor([-200.0, 200.0]), t)))  # logits, not probabilities


def test_combo_mixes_bce_and_dice() -> None:
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    bce = float(build_loss("bce")(logits, target))
    dice = float(build_loss("dice")(logits, target))
    assert float(build_loss("combo", alpha=0.0)(logits, target)) == pytest.approx(dice)
    assert float(build_loss("combo", alpha=1.0)(logits, target)) == pytest.approx(bce)
    assert float(build_loss("combo", alpha=0.7)(logits, target)) == pytest.approx(
        0.7 * bce + 0.3 * dice
    )


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(alpha: float) -> None:
    message = rf"alpha={alpha} is outside \[0, 1\] \(0 is pure Dice, 1 pure BCE\)"
    with pytest.raises(ConfigError, match=message):
        build_loss("combo", alpha=alpha)
    with pytest.raises(ConfigError, match=message):  # whichever loss runs, as it always was
        TrainConfig(loss="dice", alpha=alpha)


def test_combo_declares_alpha_with_its_preset() -> None:
    (knob,) = LOSSES.knobs("combo")
    assert (knob.name, knob.default, knob.type) == ("alpha", 0.5, float)
    assert LOSSES.knobs("dice") == () and LOSSES.knobs("bce") == ()
    assert build_loss("combo").alpha == 0.5  # unset (or None) keeps the preset
    assert build_loss("combo", alpha=None).alpha == 0.5


def test_a_knob_of_another_loss_fails_naming_the_loss() -> None:
    with pytest.raises(
        ConfigError, match="alpha does not apply to loss 'dice' \\(its knobs: none\\)"
    ):
        build_loss("dice", alpha=0.3)


def test_config_builds_its_loss_with_its_own_knobs() -> None:
    loss = TrainConfig(alpha=0.25).build_loss()
    assert isinstance(loss, ComboLoss) and loss.alpha == 0.25
    assert TrainConfig(loss="bce", alpha=0.25).loss_kwargs() == {}
    assert TrainConfig(alpha=0.25).loss_kwargs() == {"alpha": 0.25}


def test_unknown_loss_names_choices() -> None:
    with pytest.raises(ConfigError, match="bce, combo, dice"):
        build_loss("focal")


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_and_differentiable(name: str) -> None:
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = build_loss(name)(logits, (torch.rand(2, 1, 8, 8) > 0.7).float())
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
