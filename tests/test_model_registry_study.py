"""Studies register their best model: over a real MLflow server, on other data, and when
registration fails (the study still ends well and `python -m study.register` finishes it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from study.schema import Role, Tag
from tests.cluster import MlflowServer
from tests.conftest import run_cli
from tests.study_helpers import GOOD_SEARCH, StudyEnv, write_search

pytestmark = pytest.mark.slow

SEARCH = GOOD_SEARCH.replace("trials: 1", "trials: 2").replace("max_epochs: 1", "max_epochs: 2")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow-server")
    served = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")
    try:
        yield served
    finally:
        served.close()


def parent(env: StudyEnv, uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], f"tags.{Tag.ROLE} = '{Role.STUDY}'")
    return c, runs


def test_studies_register_champion_and_other_data_over_a_server(
    server: MlflowServer, tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir, fresh=True)
    search = write_search(tmp_path / "reg.yaml", SEARCH)
    first = env.run("--search", str(search), "--study", "reg", "--mlflow-uri", server.url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "  model registry: reg version 1: champion (val_iou " in first.stdout
    c, runs = parent(env, server.url, "reg")
    (run,) = runs
    assert run.data.tags[Tag.REGISTRY].startswith("reg version 1: champion")
    mv = c.get_model_version_by_alias("reg", "champion")
    assert str(mv.version) == "1" and mv.tags["flairseg.study"] == "reg"
    assert mv.tags["flairseg.data_fingerprint"] == run.data.tags[Tag.DATA_FINGERPRINT]
    assert json.loads(mv.tags["flairseg.config"])["image_size"] == 32
    assert "flairseg.test_iou" in mv.tags and "flairseg.val_iou" in mv.tags
    # the Models column: the logged model is the parent run's output, in its experiment
    assert [f"models:/{m.model_id}" for m in run.outputs.model_outputs] == [mv.source]
    # the Dataset column: every run of the study has the data's parts as inputs
    fingerprint = run.data.tags[Tag.DATA_FINGERPRINT]
    for r in c.search_runs([run.info.experiment_id]):
        inputs = {d.dataset.name.rsplit(":", 1)[1]: d for d in r.inputs.dataset_inputs}
        assert sorted(inputs) == ["test", "train", "val"], r.info.run_name
        assert {d.dataset.digest for d in inputs.values()} == {fingerprint[:36]}
        assert [t.value for t in inputs["val"].tags] == ["validation"]
        assert json.loads(inputs["train"].dataset.source)["uri"] == str(phantom_dir)
    # the MLflow UI at the address the summary printed: the runs, no mode toggle clicked
    address = next(x for x in first.stdout.splitlines() if x.startswith("  MLflow: open "))
    address = address.removeprefix("  MLflow: open ").split()[0]
    assert address.endswith("/runs?workflowType=machine_learning"), address
    assert run.info.run_name in ui_runs(address, run.info.run_name, 2)
    # another image size is other data: it never takes the champion
    other = env.run(
        "--search", str(search), "--study", "reg48", "--image-size", "48",
        "--mlflow-uri", server.url, "--register", "reg",
    )  # fmt: skip
    assert other.returncode == 0, other.stdout + other.stderr
    line = next(x for x in other.stdout.splitlines() if "model registry:" in x)
    assert "reg version 2: not compared with champion version 1 (" in line, line
    assert str(c.get_model_version_by_alias("reg", "champion").version) == "1"
    assert "champion-" in " ".join(c.get_registered_model("reg").aliases)
    # predict with the champion over the server, as with its checkpoint
    patient = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    result = run_cli_env(
        {"MLFLOW_TRACKING_URI": server.url},
        "flairseg.predict", "--model", "models:/reg@champion", "--input", str(patient),
        "--out", str(tmp_path / "pred"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "pred").glob("*_pred.tif"))) == len(
        list(patient.glob("*_mask.tif"))
    )


def run_cli_env(extra: dict[str, str], *args: str):
    import os
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **extra},
    )  # fmt: skip


def test_a_failed_registration_never_fails_the_study(tmp_path: Path, phantom_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    env = StudyEnv(tmp_path, phantom_dir)
    env._prefill()
    c = MlflowClient(env.mlflow_uri)
    art = tmp_path / "art"
    exp = c.create_experiment("broken", artifact_location=str(art))
    art.mkdir()
    (art / "models").write_text("a file where MLflow keeps logged models: it cannot write one")
    search = write_search(tmp_path / "s.yaml", SEARCH)
    done = env.run("--search", str(search), "--study", "broken", "--experiment", "broken")
    assert done.returncode == 0, done.stdout + done.stderr
    warning = [x for x in done.stdout.splitlines() if "not registered" in x]
    assert len(warning) == 1, done.stdout
    assert f"register it with: {sys.executable} -m study.register --study broken" in warning[0]
    runs = c.search_runs([exp], f"tags.{Tag.ROLE} = '{Role.STUDY}'")
    assert runs[0].info.status == "FINISHED" and Tag.REGISTRY not in runs[0].data.tags
    # the step alone, once the store can take the model
    (art / "models").unlink()
    command = warning[0].split("register it with: ", 1)[1].split()
    again = run_cli(*command[2:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("broken version 1: champion"), again.stdout
    assert str(c.get_model_version_by_alias("broken", "champion").version) == "1"
    twice = run_cli(*command[2:], cwd=tmp_path)
    assert twice.returncode == 0 and twice.stdout.startswith("already registered: broken version 1")


def ui_runs(address: str, parent: str, trials: int) -> str:
    """What MLflow's UI lists at `address` once the parent run's row is expanded (its
    trials are nested under it): the page's text."""
    from tests.browser import DevTools

    page = DevTools()
    try:
        page.open(address)
        page.wait_for_text(parent)
        assert page.js("document.title").startswith("Runs"), page.js("document.title")
        expand = (
            "(() => { const row = [...document.querySelectorAll('[row-id]')]"
            f".find(r => r.innerText.includes({parent!r}));"
            " const button = row && row.querySelector('button');"
            " if (button) button.click(); return Boolean(button); })()"
        )
        assert page.js(expand), "the parent run's row has no expander"
        text = page.wait_for_text(" unet combo ")
        listed = [line for line in text.splitlines() if " unet combo " in line]
        assert len(listed) == trials, text
        return text
    finally:
        page.close()
