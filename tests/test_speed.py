"""The fast path (flairseg.engine.Speed): same numbers as the plain fp32 path, within noise.

On the CPU the fast path is channels_last convolutions, which changes the order of float
sums and nothing else; `torch.compile` fuses kernels. Both must train the same model as
the reference path does, and save checkpoints a plain model loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flairseg.augment import augment, draw
from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from flairseg.engine import Speed, Trainer, load_checkpoint, model_from_checkpoint, train


def test_an_epochs_augmentation_drawn_at_once_equals_batch_by_batch() -> None:
    torch.manual_seed(0)
    x = torch.randn(20, 3, 16, 16)
    y = (torch.rand(20, 1, 16, 16) > 0.8).float()
    g = torch.Generator().manual_seed(5)
    by_batch = [augment(x[i : i + 8], y[i : i + 8], g) for i in range(0, 20, 8)]
    draws = draw(20, torch.Generator().manual_seed(5))
    at_once = [augment(x[i : i + 8], y[i : i + 8], draws[i : i + 8]) for i in range(0, 20, 8)]
    for (xa, ya), (xb, yb) in zip(by_batch, at_once, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_fast_path_trains_the_same_model_as_the_reference(
    phantom_dir: Path, default_threads: int
) -> None:
    # with torch's own threads (conftest.default_threads): under one thread the two paths'
    # running means were seen 0.011 apart, over the 1e-2 below
    config = TrainConfig(image_size=32, width=8, epochs=2, seed=3)
    data = load_dataset(phantom_dir, config)
    # On the CPU both paths compute in fp32, so the fast path's other changes (channels_last,
    # data kept on the device) must not move the losses. On CUDA the fast path is bf16: its
    # agreement with fp32 is the GPU benchmark's `--agreement` figure, not this test's (on an
    # H100 the two first-epoch losses differed by 0.1%, over this test's 1e-3).
    fast = train(config, data, device="cpu", speed=Speed())
    plain = train(config, data, device="cpu", speed=Speed(fast=False))
    for a, b in zip(fast.history, plain.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    fast_w = fast.model.state_dict()
    for key, value in plain.model.state_dict().items():
        assert torch.allclose(fast_w[key].float(), value.float(), rtol=1e-2, atol=1e-2), key
    # and the fast path really ran: its convolution weights are channels_last
    conv = fast.model.down[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not plain.model.down[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_compiled_model_trains_alike_and_saves_a_plain_checkpoint(
    phantom_dir: Path, tmp_path: Path
) -> None:
    config = TrainConfig(image_size=32, width=4, batch_size=8, epochs=1, seed=1, augment=False)
    data = load_dataset(phantom_dir, config)
    compiled = Trainer(config, speed=Speed(compile=True))
    assert compiled.forward is not compiled.state.model
    loss_compiled = compiled.train_epoch(data.train)
    loss_plain = Trainer(config, speed=Speed(fast=False)).train_epoch(data.train)
    assert loss_compiled == pytest.approx(loss_plain, rel=1e-3)
    compiled.state.extra = {"split": data.split.to_dict(), "fingerprint": data.fingerprint}
    path = compiled.state.save(tmp_path / "state.pt")
    ckpt = load_checkpoint(path)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])
    model_from_checkpoint(ckpt)  # a plain model takes the weights


@pytest.mark.slow
def test_compiled_trainers_one_after_another_each_compile_afresh(phantom_dir: Path) -> None:
    """A reused Ray actor trains differently shaped models in turn: each must be compiled
    for itself, not run into dynamo's recompile limit and fall back to eager silently.
    With recompiles made errors, a second U-Net of another width would fail here if the
    first one's compiled code were still cached."""
    import torch._dynamo

    data = load_dataset(phantom_dir, TrainConfig(image_size=32))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for width in (4, 6):
            config = TrainConfig(image_size=32, width=width, batch_size=8, epochs=1, augment=False)
            trainer = Trainer(config, speed=Speed(compile=True))
            assert trainer.train_epoch(data.train) > 0


def test_instance_norm_keeps_channels_last_and_matches_torch() -> None:
    from torch import nn

    from flairseg.models.unet import InstanceNorm2d

    torch.manual_seed(0)
    x = torch.randn(3, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    theirs = nn.InstanceNorm2d(8, affine=True)
    nn.init.uniform_(theirs.weight)
    nn.init.normal_(theirs.bias)
    ours = InstanceNorm2d(8)
    ours.load_state_dict(theirs.state_dict())  # the same keys: old checkpoints load
    y = ours(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, theirs(x), atol=1e-5)


def test_the_reference_path_computes_in_fp32_and_names_it() -> None:
    from flairseg.speed import precision_name

    assert precision_name(torch.device("cpu"), fast=True) == "fp32"
    assert precision_name(torch.device("cpu"), fast=False) == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_reference_keeps_data_on_the_host_in_true_fp32(phantom_dir: Path) -> None:
    from flairseg.speed import exact_fp32, precision_name

    config = TrainConfig(image_size=32, width=4, batch_size=8, epochs=1)
    data = load_dataset(phantom_dir, config)
    reference, fast = Trainer(config, "cuda", Speed(fast=False)), Trainer(config, "cuda")
    assert reference.to_device(data.train).images.device.type == "cpu"
    assert fast.to_device(data.train).images.device.type == "cuda"
    assert precision_name(torch.device("cuda"), fast=False) == "fp32"
    assert precision_name(torch.device("cuda"), fast=True) in ("bf16", "fp16")
    before = torch.backends.cudnn.allow_tf32
    with exact_fp32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32 == before
    assert reference.train_epoch(data.train) > 0
