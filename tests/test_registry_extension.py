"""Adding a model or a loss is one registered builder: the config, the train CLI and search
files take its knobs with no other change. A tiny 1-conv model and a focal loss are
registered here for the length of a test, then removed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flairseg import predict as predict_cli
from flairseg import train as train_cli
from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from flairseg.engine import train
from flairseg.errors import ConfigError
from flairseg.losses import LOSSES, build_loss
from flairseg.models import MODELS, Knob, build_model
from study import search as searches

BASE_KEYS = list(TrainConfig().to_dict())


class TinyNet(nn.Module):
    """One conv. Shape: (B, C, H, W) -> logits (B, 1, H, W)."""

    def __init__(self, in_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def build_tinynet(in_channels: int, image_size: int, kernel: int) -> TinyNet:
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"kernel={kernel} for tinynet must be odd and positive")
    return TinyNet(in_channels, kernel)


class FocalLoss(nn.Module):
    """(1 - p_t)**gamma * BCE, mean over elements (Lin et al. 2017, without the class weight)."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        return ((1 - torch.exp(-bce)) ** self.gamma * bce).mean()


FOCAL_GAMMAS: list[float] = []  # every gamma the focal builder was called with


def build_focal(gamma: float) -> nn.Module:
    FOCAL_GAMMAS.append(gamma)
    return FocalLoss(gamma)


@pytest.fixture()
def tinynet() -> Iterator[str]:
    MODELS.register("tinynet", knobs=[Knob("kernel", 3, "conv kernel side, odd")])(build_tinynet)
    try:
        yield "tinynet"
    finally:
        MODELS.unregister("tinynet")


@pytest.fixture()
def focal() -> Iterator[str]:
    LOSSES.register("focal", knobs=[Knob("gamma", 2.0, "focusing power")])(build_focal)
    FOCAL_GAMMAS.clear()
    try:
        yield "focal"
    finally:
        LOSSES.unregister("focal")


def test_a_new_model_is_a_config_with_its_knob(tinynet: str) -> None:
    config = TrainConfig(model=tinynet, kernel=5)
    assert config.to_dict() == {**TrainConfig(model=tinynet).to_dict(), "kernel": 5}
    assert list(config.to_dict()) == [*BASE_KEYS, "kernel"]  # appended, old keys in place
    assert TrainConfig(model=tinynet).build_model().conv.kernel_size == (3, 3)  # the preset
    assert TrainConfig.from_dict(config.to_dict()) == config  # a checkpoint's config dict
    assert build_model(tinynet, 1, 32, kernel=1).conv.kernel_size == (1, 1)
    with pytest.raises(ConfigError, match="kernel=4 for tinynet must be odd"):
        TrainConfig(model=tinynet, kernel=4)
    with pytest.raises(ConfigError, match="must be int"):
        TrainConfig(model=tinynet, kernel="3")
    with pytest.raises(
        ConfigError,
        match=r"kernel does not apply to model 'unet' \(its knobs: depth, width, norm\)",
    ):
        TrainConfig(kernel=3)
    with pytest.raises(ConfigError, match="width does not apply to model 'tinynet'"):
        TrainConfig(model=tinynet, width=8)


def test_a_new_model_trains_and_predicts_through_the_clis(
    tinynet: str, phantom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores, ckpt = tmp_path / "scores.json", tmp_path / "tiny.ckpt"
    argv = ["--data", str(phantom_dir), "--model", tinynet, "--kernel", "3", "--epochs", "1"]
    argv += ["--image-size", "32", "--device", "cpu", "--json", str(scores)]
    assert train_cli.main([*argv, "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "training tinynet kernel=3 / combo(alpha=0.5), 32 px" in out
    assert json.loads(scores.read_text())["config"]["kernel"] == 3
    patient = phantom_dir / json.loads(scores.read_text())["split"]["val"][0]
    argv = ["--checkpoint", str(ckpt), "--input", str(patient), "--out", str(tmp_path / "pred")]
    assert predict_cli.main([*argv, "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pred").glob("*_pred.tif"))) == 12
    help_text = train_cli.build_parser().format_help()
    assert "--kernel KERNEL" in help_text and "tinynet: conv kernel side, odd" in help_text


def test_a_search_file_samples_the_new_knob(tinynet: str, tmp_path: Path) -> None:
    import optuna

    path = tmp_path / "tiny.yaml"
    path.write_text(
        "fixed: {model: tinynet, image_size: 32}\n"
        "space:\n"
        "  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "  tinynet: {kernel: {choice: [1, 3, 5]}}\n"
        "points: [{kernel: 5}]\n"
        "trials: 2\n"
        "asha: {max_epochs: 1}\n"
    )
    s = searches.load(str(path))
    assert [d.name for d in s.dims] == ["lr", "tinynet.kernel"]
    assert s.optuna_points() == [{"tinynet.kernel": 5}]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = s(trial)["flairseg"]
    assert config["model"] == "tinynet" and config["kernel"] == trial.params["tinynet.kernel"]
    path.write_text(path.read_text().replace("choice: [1, 3, 5]", "choice: [1, 4]"))
    with pytest.raises(ConfigError, match="space.tinynet.kernel: kernel=4 for tinynet"):
        searches.load(str(path))
    bad = "fixed: {model: unet}\nspace: {unet: {kernel: {choice: [1, 3]}}}\n"
    path.write_text(bad)
    with pytest.raises(ConfigError, match="'kernel' does not apply to model 'unet'"):
        searches.load(str(path))


def test_unregistering_restores_the_vocabulary() -> None:
    MODELS.register("tinynet", knobs=[Knob("kernel", 3, "conv kernel side, odd")])(build_tinynet)
    assert "kernel" in TrainConfig().to_dict()
    MODELS.unregister("tinynet")
    assert list(TrainConfig().to_dict()) == BASE_KEYS
    with pytest.raises(ConfigError, match="unknown setting 'kernel'"):
        TrainConfig.from_dict({"kernel": 3})
    assert "--kernel" not in train_cli.build_parser().format_help()


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ([], r"the builder takes \(in_channels, image_size, kernel\)"),  # undeclared knob
        ([Knob("kernel", 3, "k"), Knob("size", 3, "s")], "must take"),  # knob not taken
        ([Knob("lr", 3, "k")], "must take"),
        ([Knob("kernel", 3, "k", choices=(1, 5))], "preset is not one of its choices"),
    ],
)
def test_a_declaration_that_disagrees_with_its_builder_fails_at_import(
    knobs: list[Knob], message: str
) -> None:
    with pytest.raises(RuntimeError, match=message):
        MODELS.register("tinynet", knobs=knobs)(build_tinynet)
    assert "tinynet" not in MODELS


def test_a_clashing_knob_is_refused_and_nothing_changes() -> None:
    def build_clash(in_channels: int, image_size: int, lr: float) -> TinyNet:
        return TinyNet(in_channels, 1)

    with pytest.raises(RuntimeError, match="'lr' is already a TrainConfig setting"):
        MODELS.register("clash", knobs=[Knob("lr", 0.1, "a knob named like a setting")])(
            build_clash
        )
    assert "clash" not in MODELS and list(TrainConfig().to_dict()) == BASE_KEYS

    def build_deep(in_channels: int, image_size: int, depth: float) -> TinyNet:
        return TinyNet(in_channels, 1)

    with pytest.raises(RuntimeError, match="depth is float here but int in model 'unet'"):
        MODELS.register("deep", knobs=[Knob("depth", 2.0, "a float depth")])(build_deep)
    assert "deep" not in MODELS


def test_a_new_loss_is_one_registered_function(focal: str) -> None:
    config = TrainConfig(loss=focal, gamma=3)
    assert list(config.to_dict())[:5] == ["model", "loss", "alpha", "gamma", "lr"]
    assert config.gamma == 3.0 and config.loss_kwargs() == {"gamma": 3.0}
    assert config.build_loss().gamma == 3.0 and build_loss(focal).gamma == 2.0
    assert TrainConfig().gamma == 2.0  # a loss knob's flat key holds its preset
    args = train_cli.build_parser().parse_args(["--loss", "focal", "--gamma", "1.5"])
    assert train_cli.config_from_args(args).build_loss().gamma == 1.5
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = config.build_loss()(logits, (torch.rand(2, 1, 8, 8) > 0.7).float())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    s = searches.parse(
        {
            "fixed": {"loss": focal, "image_size": 32},
            "space": {"gamma": {"uniform": [1.0, 3.0], "when": {"loss": focal}}},
            "asha": {"max_epochs": 1},
        },
        name="focal",
    )
    assert s.config_for({"gamma": 1.25}).build_loss().gamma == 1.25
    with pytest.raises(RuntimeError, match="gamma has preset 1.0 here but 2.0 in loss 'focal'"):
        LOSSES.register("focal2", knobs=[Knob("gamma", 1.0, "another preset")])(build_focal)


def test_training_uses_the_new_loss_knob(focal: str, phantom_dir: Path) -> None:
    config = TrainConfig(loss=focal, gamma=3.0, image_size=32, width=4, epochs=1, batch_size=8)
    FOCAL_GAMMAS.clear()
    train(config, load_dataset(phantom_dir, config), device="cpu")
    assert FOCAL_GAMMAS and set(FOCAL_GAMMAS) == {3.0}


def test_the_new_knob_is_an_axis_of_the_report(tinynet: str) -> None:
    """The report's axes come from the trials' params as study logs them: the new model's
    knob becomes an axis and a knob of the best table with no change to dashboards."""
    from dashboards.load import StudyData, Trial
    from study.tracking import trial_params

    trials = []
    for number, kernel in enumerate((1, 3, 5)):
        config = TrainConfig(model=tinynet, kernel=kernel, image_size=32)
        params = {k: str(v) for k, v in trial_params(config).items()}
        assert params["kernel"] == str(kernel)
        trials.append(
            Trial(
                run_id=f"r{number}", name=f"#{number}", number=number, model=tinynet,
                loss="combo", status="completed", params=params, sampled=["kernel"],
                metrics={"val_iou": 0.1 * number}, epochs=1, planned=1,
            )
        )  # fmt: skip
    data = StudyData("e", "s", "sqlite:///nowhere.db", trials, "val_iou", "max")
    assert data.hyperparameters() == ["kernel"]
    assert trials[0].knobs == ["kernel"]
