"""A fused step of K SETRs is K steps of their own (flairseg.fused, flairseg.models.
setr_fused): outputs, gradients, batch-norm statistics and Adam updates to float
tolerance, each encoder and decoder variant; a cross-validated SETR run fused and one
after another gives the same metrics and the same checkpoint, and a fused run resumes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from flairseg import fused
from flairseg.config import TrainConfig
from flairseg.cv import train_folds
from flairseg.dataset import load_dataset
from flairseg.engine import Speed, Trainer
from flairseg.folds import make_folds
from flairseg.models import setr_fused
from tests.test_fused import TOL, assert_same_run, batches

VARIANTS = [("ours", "ours"), ("ours", "seed"), ("seed", "ours"), ("seed", "seed")]
TINY = dict(model="setr", image_size=32, num_cuts=4, dim=32, depth=2, heads=4, mlp_dim=64)


def config(encoder: str = "ours", decoder: str = "ours", **changes) -> TrainConfig:
    return TrainConfig(**TINY, encoder=encoder, decoder=decoder, batch_size=4).replace(**changes)


def trainers(encoder: str, decoder: str, speed: Speed) -> list[Trainer]:
    """Three SETRs of one shape, each its own seed (weights), learning rate and alpha."""
    return [
        Trainer(config(encoder, decoder, seed=seed, lr=lr, alpha=alpha), "cpu", speed)
        for seed, lr, alpha in ((0, 1e-3, 0.3), (1, 3e-3, 0.5), (2, 5e-4, 0.9))
    ]


@pytest.mark.parametrize(("encoder", "decoder"), VARIANTS)
@pytest.mark.parametrize("fast", [False, True], ids=["fp32", "fast"])
def test_a_fused_step_is_each_setrs_own_step(encoder: str, decoder: str, fast: bool) -> None:
    speed = Speed(fast=fast)
    alone, together = trainers(encoder, decoder, speed), trainers(encoder, decoder, speed)
    xs, ys = batches(3)

    # each on its own: its logits (on fresh copies: a forward in train mode moves
    # batch-norm statistics), then a step, its gradients kept
    fresh = trainers(encoder, decoder, speed)
    expected_logits = [t.state.model(x).detach() for t, x in zip(fresh, xs, strict=True)]
    expected_grads = []
    for t, x, y in zip(alone, xs, ys, strict=True):
        t.step(x, y)
        expected_grads.append({n: p.grad.clone() for n, p in t.state.model.named_parameters()})

    looked = trainers(encoder, decoder, speed)
    got_logits = fused.forward([t.state.model for t in looked], xs)
    for got, want in zip(got_logits, expected_logits, strict=True):
        assert got.shape == want.shape == (4, 1, 32, 32)
        torch.testing.assert_close(got.detach(), want, **TOL)
    fused.step(together, xs, ys)

    for a, b, grads in zip(alone, together, expected_grads, strict=True):
        params = dict(b.state.model.named_parameters())
        assert list(params) == list(grads)
        for name, p in params.items():
            torch.testing.assert_close(p.grad, grads[name], **TOL, msg=name)
        for (name, want), got in zip(
            a.state.model.state_dict().items(), b.state.model.state_dict().values(), strict=True
        ):  # weights after Adam's update, running means and variances, batch counts
            pair = (params[name].grad, grads[name]) if name in grads else None
            adam_close(got, want, pair, a.state.config.lr, name)
        steps = [o.state_dict()["state"] for o in (a.state.optimizer, b.state.optimizer)]
        assert steps[0].keys() == steps[1].keys()


def adam_close(got: torch.Tensor, want: torch.Tensor, grads, lr: float, name: str) -> None:
    """A weight after Adam's first step, or a buffer (`grads` None), as the model's own.

    Adam's first step moves a weight by lr·g/(|g| + 1e-8): where a gradient is near 1e-8
    its float noise moves the weight by a few hundredths of lr (as for the U-Net). Some of
    a SETR's gradients are zero but for rounding: a bias right before batch norm,
    attention's key bias (softmax does not see it). There the two paths' gradients differ
    by more than their size, so their first step is ±lr, whichever sign the rounding gave:
    those are held to be tiny (under 1e-6) and their weights to Adam's bound, 2·lr."""
    if grads is None:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)
        return
    fused_grad, own_grad = grads
    noise = (fused_grad - own_grad).abs() > 0.1 * own_grad.abs()
    assert (own_grad[noise].abs() < 1e-6).all(), name
    torch.testing.assert_close(got[~noise], want[~noise], rtol=1e-4, atol=0.02 * lr, msg=name)
    assert ((got - want)[noise].abs() <= 2 * lr * (1 + 1e-4)).all(), name


@pytest.mark.parametrize(("encoder", "decoder"), VARIANTS)
def test_in_float64_fused_setrs_are_the_models_to_rounding(encoder: str, decoder: str) -> None:
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(config(encoder, decoder).build_model().double().train())
    copies = [copy.deepcopy(m) for m in models]
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64) for _ in models]

    want = [m(x) for m, x in zip(copies, xs, strict=True)]
    got = setr_fused.forward(models, xs)
    weights = [1.0, 2.0, 3.0]  # the K losses apart: a gradient mixed up between models shows
    sum(w * z.sigmoid().mean() for w, z in zip(weights, want, strict=True)).backward()
    sum(w * z.sigmoid().mean() for w, z in zip(weights, got, strict=True)).backward()
    tight = dict(rtol=1e-9, atol=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tight)
    for m, c in zip(models, copies, strict=True):
        for (name, p), q in zip(m.named_parameters(), c.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, **tight, msg=name)
        for (name, buf), other in zip(m.named_buffers(), c.buffers(), strict=True):
            torch.testing.assert_close(buf, other, **tight, msg=name)


def test_setrs_of_one_shape_fuse() -> None:
    setrs = [t.state.model for t in trainers("ours", "ours", Speed())]
    assert fused.fusable(setrs) and setr_fused.fusable(setrs)
    assert not fused.fusable(setrs[:1])
    assert not fused.fusable([setrs[0], setrs[0]])  # one model twice: its statistics once
    assert not fused.fusable([setrs[0], config(heads=2).build_model()])  # same shapes
    assert not fused.fusable([setrs[0], config("seed", "ours").build_model()])
    assert not fused.fusable([setrs[0], config(dim=64).build_model()])
    unet = TrainConfig(model="unet", width=4, image_size=32).build_model()
    assert not fused.fusable([setrs[0], unet])  # a mix of fusable models
    with pytest.raises(TypeError):
        fused.forward([setrs[0], unet], batches(2)[0])


def fold_run(phantom_dir: Path, fuse: str, epochs: int, resume=None):
    config = TrainConfig(**TINY, batch_size=8, epochs=epochs, seed=0)
    data = load_dataset(phantom_dir, config)
    plan, datasets = make_folds(data, 3, config.split_seed)
    return train_folds(config, plan, datasets, resume=resume, speed=Speed(fuse=fuse))


def test_a_cross_validated_setr_run_fused_and_not_gives_the_same_run(phantom_dir: Path) -> None:
    on, off = fold_run(phantom_dir, "on", 2), fold_run(phantom_dir, "off", 2)
    assert on.state.fused and not off.state.fused
    assert_same_run(on, off)


def test_a_fused_setr_run_resumes(phantom_dir: Path, tmp_path: Path) -> None:
    straight = fold_run(phantom_dir, "on", 2)
    first = fold_run(phantom_dir, "on", 1)
    first.state.save(tmp_path / "ckpt.pt")
    resumed = fold_run(phantom_dir, "on", 2, resume=tmp_path / "ckpt.pt")
    assert resumed.state.fused and len(resumed.state.history) == 2
    for a, b in zip(resumed.state.history, straight.state.history, strict=True):
        assert a["val_iou"] == pytest.approx(b["val_iou"], rel=1e-3, abs=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)
