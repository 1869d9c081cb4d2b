"""A fused step of K U-Nets is K steps of their own (flairseg.fused): outputs, gradients,
batch-norm statistics and Adam updates to float tolerance; a cross-validated run fused
and one after another give the same metrics and the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flairseg import fused
from flairseg.config import TrainConfig
from flairseg.cv import train_folds
from flairseg.dataset import load_dataset
from flairseg.engine import Speed, Trainer
from flairseg.folds import make_folds

TOL = dict(rtol=1e-4, atol=1e-5)


def trainers(norm: str, speed: Speed) -> list[Trainer]:
    """Three U-Nets of one shape, each its own seed (weights), learning rate and alpha."""
    return [
        Trainer(
            TrainConfig(
                model="unet", width=4, depth=2, norm=norm, image_size=32, batch_size=4,
                seed=seed, lr=lr, loss="combo", alpha=alpha,
            ),
            "cpu",
            speed,
        )
        for seed, lr, alpha in ((0, 1e-3, 0.3), (1, 3e-3, 0.5), (2, 5e-4, 0.9))
    ]  # fmt: skip


def batches(k: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(k)]
    ys = [(torch.rand(4, 1, 32, 32, generator=g) > 0.7).float() for _ in range(k)]
    return xs, ys


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
@pytest.mark.parametrize("fast", [False, True], ids=["fp32", "fast"])
def test_a_fused_step_is_each_models_own_step(norm: str, fast: bool) -> None:
    speed = Speed(fast=fast)
    alone, together = trainers(norm, speed), trainers(norm, speed)
    xs, ys = batches(3)

    # each on its own: its logits (on a copy: a forward in train mode moves batch-norm
    # statistics), then a step, its gradients kept
    expected_logits = [
        t.state.model(x).detach() for t, x in zip(trainers(norm, speed), xs, strict=True)
    ]
    expected_grads = []
    for t, x, y in zip(alone, xs, ys, strict=True):
        t.step(x, y)
        expected_grads.append([p.grad.clone() for p in t.state.model.parameters()])

    looked = trainers(norm, speed)
    got_logits = fused.forward([t.state.model for t in looked], xs)
    for got, want in zip(got_logits, expected_logits, strict=True):
        torch.testing.assert_close(got.detach(), want, **TOL)
    fused.step(together, xs, ys)

    for a, b, grads in zip(alone, together, expected_grads, strict=True):
        for p, want in zip(b.state.model.parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad, want, **TOL)
        for (name, want), got in zip(
            a.state.model.state_dict().items(), b.state.model.state_dict().values(), strict=True
        ):  # weights after Adam's update, running means and variances, batch counts
            # Adam's first step divides a gradient by its size plus 1e-8: where a gradient is
            # near 1e-8 its float noise moves the weight by a few hundredths of lr
            lr = a.state.config.lr
            torch.testing.assert_close(got, want, rtol=1e-4, atol=0.02 * lr, msg=name)
        steps = [o.state_dict()["state"] for o in (a.state.optimizer, b.state.optimizer)]
        assert steps[0].keys() == steps[1].keys()


def test_only_models_of_one_kind_and_shape_fuse() -> None:
    unets = [t.state.model for t in trainers("batch", Speed())]
    assert fused.fusable(unets)
    assert not fused.fusable(unets[:1])
    assert not fused.fusable([unets[0], unets[0]])  # one model twice: its statistics once
    wider = Trainer(TrainConfig(model="unet", width=8, image_size=32), "cpu").state.model
    assert not fused.fusable([unets[0], wider])
    setrs = [
        TrainConfig(model="setr", image_size=32, depth=1, dim=32, heads=2, seed=s).build_model()
        for s in (0, 1)
    ]
    assert fused.fusable(setrs)  # tests/test_fused_setr.py holds what a fused SETR step does
    assert not fused.fusable([unets[0], setrs[0]])


def fold_run(phantom_dir: Path, fuse: str, epochs: int, resume=None):
    config = TrainConfig(image_size=32, width=4, batch_size=8, epochs=epochs, seed=0)
    data = load_dataset(phantom_dir, config)
    plan, datasets = make_folds(data, 3, config.split_seed)
    return train_folds(config, plan, datasets, resume=resume, speed=Speed(fuse=fuse))


def assert_same_run(on, off) -> None:
    """Two cross-validated runs of one config, fused and not: the same metrics every epoch
    (to tolerance), the same checkpoint layout and shapes, and weights apart only by float
    rounding."""
    for a, b in zip(on.state.history, off.state.history, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), key
    ckpt_on, ckpt_off = on.state.state_dict(), off.state.state_dict()
    assert ckpt_on.keys() == ckpt_off.keys()
    for fold_on, fold_off in zip(ckpt_on["folds"], ckpt_off["folds"], strict=True):
        assert fold_on.keys() == fold_off.keys()
        assert fold_on["model"].keys() == fold_off["model"].keys()
        for key, value in fold_on["model"].items():
            assert value.shape == fold_off["model"][key].shape, key
        # the weights and statistics each path learnt: apart only by float rounding as two
        # epochs of Adam carry it (about 2e-4 of the model's norm here; a gradient near
        # Adam's eps moves its weight by a fraction of lr, so no one element is held);
        # fold 1 and fold 2, from the same start on other data, are about 7e-2 apart
        on_w, off_w = (_flat(f["model"]) for f in (fold_on, fold_off))
        assert (on_w - off_w).norm() / off_w.norm() < 5e-3


def test_a_cross_validated_run_fused_and_not_gives_the_same_run(phantom_dir: Path) -> None:
    on, off = fold_run(phantom_dir, "on", 2), fold_run(phantom_dir, "off", 2)
    assert on.state.fused and not off.state.fused
    data = load_dataset(phantom_dir, TrainConfig(image_size=32))
    sizes = {len(d.train) for d in make_folds(data, 3, 0)[1]}
    assert len(sizes) > 1 or next(iter(sizes)) % 8  # some batches ran unfused: the tails
    assert_same_run(on, off)


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.float().flatten() for v in state.values() if v.is_floating_point()])


def test_a_fused_run_resumes(phantom_dir: Path, tmp_path: Path) -> None:
    straight = fold_run(phantom_dir, "on", 3)
    first = fold_run(phantom_dir, "on", 1)
    first.state.save(tmp_path / "ckpt.pt")
    resumed = fold_run(phantom_dir, "on", 3, resume=tmp_path / "ckpt.pt")
    assert resumed.state.fused and len(resumed.state.history) == 3
    for a, b in zip(resumed.state.history, straight.state.history, strict=True):
        assert a["val_iou"] == pytest.approx(b["val_iou"], rel=1e-3, abs=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)


def test_the_probe_leaves_the_run_as_it_was(phantom_dir: Path) -> None:
    config = TrainConfig(image_size=32, width=4, batch_size=8, seed=0)
    data = load_dataset(phantom_dir, config)
    ts = [Trainer(config, "cpu") for _ in range(2)]
    before = [{k: v.clone() for k, v in t.state.model.state_dict().items()} for t in ts]
    streams = [t.state.generator.get_state() for t in ts]
    _, ratio = fused.faster(ts, [data.train, data.train])
    assert ratio > 0
    for t, saved, stream in zip(ts, before, streams, strict=True):
        for key, value in t.state.model.state_dict().items():
            assert torch.equal(value, saved[key]), key
        assert not t.state.optimizer.state  # no step taken
        assert torch.equal(t.state.generator.get_state(), stream)  # no number drawn
