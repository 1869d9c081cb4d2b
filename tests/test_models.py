"""Every registered model, and SETR over its geometry: forward, backward, shape, no NaN."""

from __future__ import annotations

import pytest
import torch

from flairseg.config import TrainConfig
from flairseg.errors import ConfigError
from flairseg.models import MODELS, build_model, model_defaults, model_keys, model_params

# knobs that keep the registry-wide tests quick; a model not listed runs at its presets, so
# a new model file is covered without touching this test
TINY = {"unet": {"width": 4}, "setr": {"depth": 1, "dim": 32, "heads": 2, "mlp_dim": 32}}


def _forward_backward(model: torch.nn.Module, channels: int, size: int) -> torch.Tensor:
    x = torch.randn(2, channels, size, size)
    out = model(x)
    out.mean().backward()
    assert out.shape == (2, 1, size, size)
    assert torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


def test_tiny_settings_name_registered_models_and_their_own_knobs() -> None:
    for name, knobs in TINY.items():
        assert set(knobs) <= set(model_params(name)), name


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_forward_backward(name: str, channels: int) -> None:
    _forward_backward(build_model(name, channels, 32, **TINY.get(name, {})), channels, 32)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_declares_its_knobs_with_help_and_presets(name: str) -> None:
    for knob in MODELS.knobs(name):
        assert knob.help and "\n" not in knob.help, (name, knob.name)
        assert not knob.choices or knob.default in knob.choices
    assert list(model_defaults(name)) == model_params(name)
    assert set(model_params(name)) <= set(model_keys())
    config = TrainConfig(model=name, image_size=64)  # None everywhere: the presets
    assert all(config.to_dict()[key] is None for key in model_params(name))


def test_the_declared_presets_and_the_flat_order() -> None:
    assert model_defaults("unet") == {"depth": 2, "width": 64, "norm": "batch"}
    assert model_defaults("setr") == {
        "num_cuts": 8,
        "depth": 4,
        "dim": 256,
        "heads": 8,
        "mlp_dim": 512,
        "encoder": "ours",
        "decoder": "ours",
    }
    assert model_keys() == [
        *("depth", "width", "norm"),
        *("num_cuts", "dim", "heads", "mlp_dim", "encoder", "decoder"),
    ]


def test_a_knob_left_none_keeps_the_preset() -> None:
    model = build_model("unet", 3, 64, depth=None, width=None, norm=None)
    assert len(model.down) == 2 and model.down[0][0].out_channels == 64


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("num_cuts", [4, 8, 16])
def test_setr_geometry(size: int, num_cuts: int) -> None:
    model = build_model("setr", 3, size, num_cuts=num_cuts, **TINY["setr"])
    _forward_backward(model, 3, size)


def test_unet_preset_is_the_seed() -> None:
    model = build_model("unet", 3, 64)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(convs) == 256 and convs[0] == 64  # 64-128-256, two pooling levels
    assert (
        sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 1
    )  # one pool used twice
    assert len(model.down) == 2


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("norm", ["none", "batch", "instance", "group"])
def test_unet_knobs(depth: int, norm: str) -> None:
    _forward_backward(build_model("unet", 3, 32, depth=depth, width=4, norm=norm), 3, 32)


@pytest.mark.parametrize(
    ("name", "knobs", "message"),
    [
        ("setr", {"num_cuts": 3}, "num_cuts=3 does not divide"),
        ("setr", {"num_cuts": 64 // 12}, "does not divide"),
        ("setr", {"num_cuts": 16, "dim": 30, "heads": 4}, "dim=30 is not divisible by heads=4"),
        ("unet", {"depth": 7}, "depth=7"),
        ("unet", {"norm": "layer"}, "norm='layer'"),
        ("unet", {"num_cuts": 8}, "num_cuts does not apply to model 'unet'"),
        ("vit", {}, "unknown model 'vit'; choose one of: setr, unet"),
    ],
)
def test_bad_model_settings(name: str, knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, 3, 64, **knobs)


def test_setr_patch_must_be_power_of_two() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        build_model("setr", 3, 96, num_cuts=8)  # 12-px patches


def test_config_checks_geometry_before_any_run() -> None:
    with pytest.raises(ConfigError, match="image_size=62 is not divisible"):
        TrainConfig(image_size=62)
    with pytest.raises(ConfigError, match="unknown setting 'widht'"):
        TrainConfig.from_dict({"widht": 8})
