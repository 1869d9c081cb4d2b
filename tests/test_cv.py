"""Patient k-fold cross-validation: the folds, the fold mean, lockstep training, the
ensemble, resuming, and `python -m flairseg.train --folds K` end to end.

Real phantom TIFFs, tiny runs: 32 px, 8-wide U-Nets, K = 2 or 3, 1-2 epochs on the CPU.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from flairseg.config import TrainConfig
from flairseg.cv import FoldsReport, FoldsResult, combine, train_folds
from flairseg.dataset import Dataset, Part, Split, load_dataset
from flairseg.engine import load_checkpoint, model_from_checkpoint, predict_probs, train
from flairseg.ensemble import Ensemble
from flairseg.errors import ConfigError
from flairseg.folds import Folds, assign_folds, check_folds, make_folds, split_of
from tests.conftest import run_cli
from tests.inproc import call_cli

# lr and batch chosen so that two epochs already give each fold its own, non-zero scores
CONFIG = TrainConfig(image_size=32, width=8, batch_size=4, lr=0.01, epochs=2)
CPU = "cpu"  # the lockstep and resume checks compare bit for bit: same device, same kernels


@dataclass
class CVRun:
    config: TrainConfig
    data: Dataset
    plan: Folds
    datasets: list[Dataset]
    result: FoldsResult
    logged: list[tuple[dict[str, float], list[dict[str, float]]]]  # (mean, per fold) by epoch


@pytest.fixture(scope="module")
def cv_run(phantom_dir: Path) -> CVRun:
    """One uninterrupted 2-fold, 2-epoch run; what `on_epoch` saw of it."""
    data = load_dataset(phantom_dir, CONFIG)
    plan, datasets = make_folds(data, 2, CONFIG.split_seed)
    logged = []
    result = train_folds(
        CONFIG,
        plan,
        datasets,
        on_epoch=lambda r: logged.append((dict(r.metrics), [dict(f.metrics) for f in r.folds])),
        device=CPU,
    )
    return CVRun(CONFIG, data, plan, datasets, result, logged)


def patient_slices(part: Part, name: str) -> tuple[torch.Tensor, ...]:
    """Images, masks, volume stats and numbers of one patient's slices, by slice number."""
    sel = part.patient == part.patients.index(name)
    order = part.number[sel].argsort()
    return tuple(t[sel][order] for t in (part.images, part.masks, part.mean, part.std, part.number))


def assert_part_holds_its_patients(part: Part, data: Dataset) -> None:
    """Every slice's patient index names a patient of the part, and each patient's slices are
    exactly its slices in the single-split data set."""
    assert sorted(part.patient.unique().tolist()) == list(range(len(part.patients)))
    for name in part.patients:
        source = data.train if name in data.train.patients else data.val
        for got, want in zip(patient_slices(part, name), patient_slices(source, name), strict=True):
            assert torch.equal(got, want), name


def test_folds_partition_the_non_test_patients(phantom_dir: Path) -> None:
    config = CONFIG.replace(split_seed=7)
    data = load_dataset(phantom_dir, config)
    plan, folds = make_folds(data, 3, config.split_seed)
    dealt = [p for names in plan.val for p in names]
    assert sorted(dealt) == sorted(data.split.train + data.split.val)
    assert len(dealt) == len(set(dealt)) == 10
    assert plan.test == data.split.test and len(plan.test) == 2
    assert not set(plan.test) & set(dealt)
    assert sorted(len(v) for v in plan.val) == [3, 3, 4]
    assert split_of(data, 3, 7) == {
        **{f"fold {k}": list(v) for k, v in enumerate(plan.val, start=1)},
        "test": list(plan.test),
    }
    pool = len(data.train) + len(data.val)
    for k, fold in enumerate(folds):
        others = tuple(sorted(p for j, v in enumerate(plan.val) if j != k for p in v))
        assert fold.split == Split(train=others, val=plan.val[k], test=plan.test)
        assert fold.train.patients == others and fold.val.patients == plan.val[k]
        assert fold.test is data.test
        assert len(fold.train) + len(fold.val) == pool
        assert_part_holds_its_patients(fold.train, data)
        assert_part_holds_its_patients(fold.val, data)
    assert sum(len(fold.val) for fold in folds) == pool
    assert make_folds(data, 3, 7)[0] == plan
    other, _ = make_folds(data, 3, 8)
    assert other.test == plan.test and other.val != plan.val


def test_fold_assignment_is_seeded_and_balanced() -> None:
    names = [f"P{i:02d}" for i in range(11)]
    folds = assign_folds(names, 3, seed=0)
    assert assign_folds(random.Random(1).sample(names, len(names)), 3, seed=0) == folds
    assert assign_folds(names, 3, seed=1) != folds
    for n in range(2, 12):
        for k in range(2, n + 1):
            dealt = assign_folds(names[:n], k, seed=n)
            sizes = [len(f) for f in dealt]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
            assert sorted(p for f in dealt for p in f) == names[:n]
            assert all(list(f) == sorted(f) for f in dealt)
    check_folds(11, 11)
    for bad in (1, 12):
        with pytest.raises(ConfigError, match=f"--folds {bad}"):
            check_folds(bad, 11)


def test_combine_mean_sample_std_and_per_fold() -> None:
    per_fold = [
        {"epoch": 3, "val_iou": 1.0, "val_loss": 0.5},
        {"epoch": 3, "val_iou": 2.0, "val_loss": 0.5},
        {"epoch": 3, "val_iou": 6.0, "val_loss": 0.5},
    ]
    combined = combine(per_fold)
    assert combined["epoch"] == 3 and "epoch_std" not in combined
    assert combined["val_iou"] == pytest.approx(3.0)
    assert combined["val_iou_std"] == pytest.approx(7**0.5)  # ddof 1: sqrt((4 + 1 + 9) / 2)
    assert combined["val_loss"] == pytest.approx(0.5) and combined["val_loss_std"] == 0.0
    assert [combined[f"fold{k}/val_iou"] for k in (1, 2, 3)] == [1.0, 2.0, 6.0]
    assert set(combined) == {"epoch"} | {
        f"{pre}{key}{post}"
        for key in ("val_iou", "val_loss")
        for pre, post in [("", ""), ("", "_std"), ("fold1/", ""), ("fold2/", ""), ("fold3/", "")]
    }
    one = combine([{"epoch": 1, "val_iou": 0.25}])
    assert one == {"epoch": 1, "val_iou": 0.25, "val_iou_std": 0.0, "fold1/val_iou": 0.25}


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_lockstep_folds_learn_what_each_learns_alone(cv_run: CVRun) -> None:
    folds = cv_run.result.state.folds
    assert [len(f.history) for f in folds] == [2, 2]
    for fold, data in zip(folds, cv_run.datasets, strict=True):
        alone = train(cv_run.config, data, device=CPU)
        assert alone.history == fold.history
        assert_same_weights(alone.model, fold.model)
    assert folds[0].history[-1]["val_iou"] != folds[1].history[-1]["val_iou"]


def test_logged_mean_is_the_mean_of_the_logged_folds(cv_run: CVRun) -> None:
    history, folds = cv_run.result.state.history, cv_run.result.state.folds
    assert [mean for mean, _ in cv_run.logged] == history
    for epoch, (mean, per_fold) in enumerate(cv_run.logged):
        assert per_fold == [f.history[epoch] for f in folds]
        keys = set(per_fold[0]) - {"epoch"}
        assert {"train_loss", "val_loss", "val_iou", "val_dice", "val_volume_dice"} <= keys
        assert mean["epoch"] == epoch + 1
        for key in keys:
            values = [m[key] for m in per_fold]
            assert [mean[f"fold{k}/{key}"] for k in (1, 2)] == values, key
            assert mean[key] == pytest.approx(statistics.mean(values), abs=1e-12), key
            assert mean[f"{key}_std"] == pytest.approx(statistics.stdev(values), abs=1e-12), key
    assert any(m["val_iou_std"] > 0 for m in history)


def test_ensemble_is_the_mean_of_its_members(cv_run: CVRun) -> None:
    part = cv_run.datasets[0].val
    x, _ = part.batch(torch.arange(len(part)))
    ensemble = cv_run.result.ensemble().eval()
    with torch.no_grad():
        members = [torch.sigmoid(m(x)) for m in ensemble.members]
        forward = torch.sigmoid(ensemble(x))
    assert not torch.allclose(members[0], members[1], atol=1e-3)  # two different models
    want = torch.stack(members).mean(0)
    got = predict_probs(ensemble, x)
    assert got.shape == (len(part), 1, 32, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(forward, want, rtol=0, atol=1e-5)
    _, loaded = model_from_checkpoint(cv_run.result.state.state_dict())
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 2
    torch.testing.assert_close(predict_probs(loaded, x), want, rtol=0, atol=1e-5)


def test_resume_equals_an_uninterrupted_run(cv_run: CVRun, tmp_path: Path) -> None:
    path = tmp_path / "cv.pt"

    def stop_after_saving(report: FoldsReport) -> bool:
        report.save_checkpoint(path)
        return True

    first = train_folds(
        cv_run.config, cv_run.plan, cv_run.datasets, on_epoch=stop_after_saving, device=CPU
    )
    assert first.stopped_early and load_checkpoint(path)["epoch"] == 1
    resumed = train_folds(cv_run.config, cv_run.plan, cv_run.datasets, resume=path, device=CPU)
    whole = cv_run.result.state
    assert resumed.state.epoch == 2 and resumed.state.history == whole.history
    for a, b in zip(resumed.state.folds, whole.folds, strict=True):
        assert a.history == b.history
        assert_same_weights(a.model, b.model)


def test_resume_refuses_another_kind_of_checkpoint(cv_run: CVRun, tmp_path: Path) -> None:
    config, data = cv_run.config, cv_run.data
    path = cv_run.result.state.save(tmp_path / "cv.pt")
    plan3, datasets3 = make_folds(data, 3, config.split_seed)
    with pytest.raises(ConfigError, match="holds 2 folds but the run asks for 3"):
        train_folds(config, plan3, datasets3, resume=path, device=CPU)
    other_plan, other_datasets = make_folds(data, 2, config.split_seed + 1)
    with pytest.raises(ConfigError, match="another data set or split"):
        train_folds(config, other_plan, other_datasets, resume=path, device=CPU)
    single = train(config.replace(epochs=1), data, device=CPU).state.state_dict()
    with pytest.raises(ConfigError, match="single-split run: resume it without --folds"):
        train_folds(config, cv_run.plan, cv_run.datasets, resume=single, device=CPU)
    with pytest.raises(ConfigError, match=r"cross-validated \(2 folds\).*--folds 2"):
        train(config, data, resume=path, device=CPU)


@pytest.mark.slow
def test_train_folds_cli_then_predict(phantom_dir: Path, tmp_path: Path) -> None:
    out, ckpt = tmp_path / "out.json", tmp_path / "cv.pt"
    result = call_cli(  # in process (tests.inproc): the command's output is the point here
        "flairseg.train",
        *("--data", str(phantom_dir), "--folds", "2", "--epochs", "1", "--image-size", "32"),
        *("--width", "8", "--batch-size", "4", "--lr", "0.01"),
        *("--json", str(out), "--checkpoint", str(ckpt)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(out.read_text())
    folds = payload["folds"]
    assert [f["fold"] for f in folds] == [1, 2]
    lines = result.stdout.strip().splitlines()
    for fold in folds:
        head = f"fold {fold['fold']} (val: {', '.join(fold['val_patients'])}): val dice"
        assert sum(line.startswith(head) for line in lines) == 1, result.stdout
    assert "2 folds x 1 epochs" in lines[-1] and lines[-1].count("±") >= 4, lines[-1]
    vals = [f["val_iou"] for f in folds]
    assert payload["val_iou"] == pytest.approx(statistics.mean(vals))
    assert payload["val_iou_std"] == pytest.approx(statistics.stdev(vals))
    assert payload["test_iou_single"] == pytest.approx(
        statistics.mean(f["test_iou"] for f in folds)
    )
    assert 0 <= payload["test_iou"] <= 1 and payload["epoch"] == 1
    split = payload["split"]
    assert split["folds"] == [f["val_patients"] for f in folds] and len(split["test"]) == 2
    dealt = [p for names in split["folds"] for p in names]
    assert len(set(dealt) | set(split["test"])) == len(dealt) + 2 == 12
    assert load_checkpoint(ckpt)["split"] == {"folds": split["folds"], "test": split["test"]}

    pred = tmp_path / "pred"
    patient = phantom_dir / split["test"][0]
    result = run_cli(
        "flairseg.predict", "--checkpoint", str(ckpt), "--input", str(patient), "--out", str(pred)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the mean probability of the 2 fold models" in result.stdout
    assert len(list(pred.glob("*_pred.tif"))) == 12


@pytest.mark.parametrize("folds", ["1", "99"])
def test_folds_out_of_range_is_one_line_and_writes_nothing(
    folds: str, phantom_dir: Path, tmp_path: Path
) -> None:
    out, ckpt = tmp_path / "out.json", tmp_path / "cv.pt"
    result = call_cli(  # in process (tests.inproc): refused before any training
        "flairseg.train",
        *("--data", str(phantom_dir), "--folds", folds, "--epochs", "1", "--image-size", "32"),
        *("--width", "8", "--json", str(out), "--checkpoint", str(ckpt)),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ") and f"--folds {folds}" in errors[0], errors[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists() and not ckpt.exists()
