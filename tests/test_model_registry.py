"""The model registry on a real MLflow SQLite store: champion and challenger, the registered
model read back by `flairseg.predict --model` and by `mlflow.pyfunc`, and bad names.

Parent runs are written here as a study writes them (tags, objective param, scores, the
best config and checkpoint as artifacts) around one real checkpoint from
`flairseg.train`, so each ordering of scores and data can be set; tests/
test_model_registry_study.py registers from real studies over a real server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from flairseg.checkpoint import load_checkpoint, model_from_checkpoint
from flairseg.engine import predict_probs
from study import register
from study.schema import Artifact, Param, Tag
from tests.conftest import run_cli
from tests.inproc import call_cli
from tests.study_helpers import StudyEnv, mlflow_template

SPLIT = '{"train": ["a"], "val": ["b"], "test": ["c"]}'


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, phantom_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "state.pt"
    result = run_cli(
        "flairseg.train", "--data", str(phantom_dir), "--epochs", "1", "--image-size", "32",
        "--width", "4", "--depth", "2", "--checkpoint", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, object, str]:
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    db.write_bytes(mlflow_template().read_bytes())
    uri = f"sqlite:///{db}"
    c = MlflowClient(uri)
    return uri, c, c.create_experiment("x", artifact_location=str(tmp_path / "art"))


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, trained: Path) -> str:
    """A store whose registered model `s` has version 1, the champion: its URI."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("registered")
    (folder / "mlflow.db").write_bytes(mlflow_template().read_bytes())
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("x", artifact_location=str(folder / "art"))
    register.register(uri, c, parent_run(c, exp, trained, 0.5, 1), "s")
    return uri


def parent_run(c, exp: str, state: Path, score: float, trial: int, fingerprint: str = "f" * 64):
    """A finished parent run of study `s` as study.run leaves it, best val_iou `score`."""
    config, _ = model_from_checkpoint(load_checkpoint(state))
    tags = {Tag.STUDY: "s", Tag.INVOCATION: str(trial), Tag.BEST_TRIAL: str(trial),
            Tag.DATA_FINGERPRINT: fingerprint, Tag.SPLIT: SPLIT, Tag.ROLE: "study"}  # fmt: skip
    run_id = c.create_run(exp, run_name=f"s #{trial}", tags=tags).info.run_id
    c.log_param(run_id, Param.OBJECTIVE, "val_iou (max)")
    c.log_metric(run_id, "val_iou", score)
    c.log_metric(run_id, "test_iou", score / 2)
    folder = state.parent / f"cfg{trial}"
    folder.mkdir(exist_ok=True)
    (folder / Artifact.BEST_CONFIG).write_text(json.dumps(config.to_dict()))
    c.log_artifact(run_id, str(folder / Artifact.BEST_CONFIG))
    c.log_artifact(run_id, str(state), Artifact.BEST_DIR)
    c.set_terminated(run_id)
    return c.get_run(run_id)


def aliases(c, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in c.get_registered_model(name).aliases.items()}


def test_champion_moves_only_to_a_better_comparable_version(store, trained: Path) -> None:
    uri, c, exp = store
    first = register.register(uri, c, parent_run(c, exp, trained, 0.50, 1), "s")
    assert (first.version, first.alias) == ("1", "champion")
    assert "champion (val_iou 0.5000, the first)" in first.line
    # the model is logged in the study's experiment, as an output of its parent run
    model_id = c.get_model_version("s", "1").source.removeprefix("models:/")
    assert c.get_logged_model(model_id).experiment_id == exp
    assert c.get_logged_model(model_id).source_run_id == c.get_model_version("s", "1").run_id
    worse = register.register(uri, c, parent_run(c, exp, trained, 0.40, 2), "s")
    assert (worse.version, worse.alias) == ("2", "challenger")
    assert "-0.1000 against version 1" in worse.line
    assert aliases(c, "s") == {"champion": "1", "challenger": "2"}
    better = register.register(uri, c, parent_run(c, exp, trained, 0.60, 3), "s")
    assert (better.version, better.alias) == ("3", "champion")
    assert "+0.1000 against version 1" in better.line
    assert aliases(c, "s")["champion"] == "3"
    # other data: never takes the champion, however good; its own data's aliases instead
    other = parent_run(c, exp, trained, 0.99, 4, fingerprint="e" * 64)
    alone = register.register(uri, c, other, "s")
    assert alone.alias.startswith("champion-") and aliases(c, "s")["champion"] == "3"
    assert "not compared with champion version 3 (other data" in alone.line
    # the outcome is on the parent run; the version carries what it was scored on
    assert c.get_run(other.info.run_id).data.tags[Tag.REGISTRY] == alone.line
    tags = c.get_model_version("s", alone.version).tags
    assert tags["flairseg.data_fingerprint"] == "e" * 64 and tags["flairseg.split"] == SPLIT
    assert tags["flairseg.val_iou"] == "0.99" and tags["flairseg.test_iou"] == "0.495"
    assert json.loads(tags["flairseg.config"])["image_size"] == 32
    # the same best trial again: no new version
    again = register.register(uri, c, c.get_run(other.info.run_id), "s")
    assert again.version == alone.version and "already" in again.line
    assert len(c.search_model_versions("name = 's'")) == 4


@pytest.mark.slow
def test_the_registered_model_predicts_as_its_checkpoint(
    registered: str, trained: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    uri = registered
    patient = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    env = {"MLFLOW_TRACKING_URI": uri}
    by_model = _predict(["--model", "models:/s@champion"], patient, tmp_path / "m", env)
    by_version = _predict(["--model", "models:/s/1"], patient, tmp_path / "v", env)
    by_ckpt = _predict(["--checkpoint", str(trained)], patient, tmp_path / "c", env)
    masks = sorted(p.name for p in by_ckpt.glob("*_pred.tif"))
    assert masks and masks == sorted(p.name for p in by_model.glob("*_pred.tif"))
    for name in masks:
        assert (by_model / name).read_bytes() == (by_ckpt / name).read_bytes()
        assert (by_version / name).read_bytes() == (by_ckpt / name).read_bytes()
    # mlflow.pyfunc: raw slices of one patient in, probabilities out
    import mlflow.pyfunc

    from flairseg.dataset import standardise, volume_stats

    raw = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        served = mlflow.pyfunc.load_model("models:/s@champion")
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    probs = served.predict(raw.transpose(0, 3, 1, 2).astype(np.float32))
    mean, std = volume_stats(raw, np.zeros(3, np.int64))
    x = standardise(
        torch.from_numpy(raw).permute(0, 3, 1, 2), torch.from_numpy(mean), torch.from_numpy(std)
    )
    _, model = model_from_checkpoint(load_checkpoint(trained))
    expected = predict_probs(model, x, amp=False).numpy()
    assert probs.shape == (3, 1, 32, 32)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def _predict(which: list[str], patient: Path, out: Path, env: dict[str, str]) -> Path:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        result = run_cli("flairseg.predict", *which, "--input", str(patient), "--out", str(out))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("models:/nobody@champion", "no registered model nobody"),
        ("models:/s@gold", "model s has no alias gold (it has: champion)"),
        ("models:/s/7", "model s has no version 7"),
        ("models:/s", "give models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("s3://bucket/model", "no installed package fetches s3: URIs"),
    ],
)
def test_a_missing_model_or_alias_is_one_line_and_exit_2(
    registered: str, phantom_dir: Path, tmp_path: Path, uri: str, says: str
) -> None:
    store_uri = registered
    patient = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    result = call_cli(
        "flairseg.predict",
        "--model",
        uri,
        "--input",
        str(patient),
        "--out",
        str(tmp_path / "o"),
        env={"MLFLOW_TRACKING_URI": store_uri},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--register", "a/b"], "--register 'a/b': not a registered model name (holds '/')"),
        (["--register", "x", "--no-register"], "--no-register: not with --register NAME"),
    ],
)
def test_a_bad_registered_name_is_refused_before_anything_runs(
    tmp_path: Path, phantom_dir: Path, args: list[str], says: str
) -> None:
    env = StudyEnv(tmp_path / "s", phantom_dir, fresh=True)
    env.root.mkdir()
    (env.root / "s.yaml").write_text(
        "fixed: {model: unet}\nspace: {alpha: {uniform: [0, 1]}}\ntrials: 1\n"
    )
    code, _, err = env.run_here("--search", str(env.root / "s.yaml"), *args)
    assert code == 2 and says in err, err
    assert not (env.root / "mlflow.db").exists() and not (env.root / "studies").exists()


def test_register_by_hand_says_what_it_lacks(tmp_path: Path) -> None:
    missing = call_cli(
        "study.register", "--study", "s", "--mlflow-uri", f"sqlite:///{tmp_path}/none.db"
    )
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == f"error: --mlflow-uri sqlite:///{tmp_path}/none.db: no MLflow store there (give the study's)"
    )


def test_a_registration_cut_off_before_its_alias_is_finished_by_the_next(
    store, trained: Path
) -> None:
    """The version exists but the run stopped before its alias moved: registering the same
    best trial again gives it its alias, instead of saying it is done."""
    uri, c, exp = store
    parent = parent_run(c, exp, trained, 0.5, 1)
    register.register(uri, c, parent, "s")
    c.delete_registered_model_alias("s", "champion")  # as if cut off after create_model_version
    again = register.register(uri, c, c.get_run(parent.info.run_id), "s")
    assert (again.version, again.alias) == ("1", "champion")
    assert aliases(c, "s") == {"champion": "1"}
    assert float(c.get_model_version("s", "1").tags["flairseg.score"]) == 0.5
