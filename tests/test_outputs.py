"""Every output a study writes is tried before the first trial (study.outputs): a place
that cannot be written, or a database server that does not answer, is one line and exit
2, and nothing is left behind: no Tune folder, no Optuna or MLflow file, no lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from study_helpers import StudyEnv

from study import outputs

TINY = ("--search", "combo_alpha", "--image-size", "32", "--trials", "1", "--max-epochs", "1")


def refused(tmp_path: Path, phantom_dir: Path, *args: str) -> str:
    env = StudyEnv(tmp_path / "run", phantom_dir)
    (tmp_path / "run").mkdir(exist_ok=True)
    before = set(os.listdir(tmp_path / "run"))
    code, out, err = env.run_here(*TINY, *args)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    assert set(os.listdir(tmp_path / "run")) == before  # nothing written, nothing left
    return lines[0]


def test_json_where_nothing_can_be_written_is_refused_before_the_study(
    tmp_path: Path, phantom_dir: Path
) -> None:
    line = refused(tmp_path, phantom_dir, "--json", "/proc/flairseg-summary.json")
    assert line.startswith("error: --json /proc/flairseg-summary.json: cannot write in /proc")


def test_a_sqlite_store_in_a_folder_that_takes_no_file_is_refused(
    tmp_path: Path, phantom_dir: Path
) -> None:
    line = refused(tmp_path, phantom_dir, "--mlflow-uri", "sqlite:////proc/mlflow.db")
    assert "--mlflow-uri sqlite:////proc/mlflow.db: cannot write in /proc" in line
    line = refused(tmp_path, phantom_dir, "--optuna-storage", "sqlite:////proc/optuna.db")
    assert "--optuna-storage sqlite:////proc/optuna.db: cannot write in /proc" in line


def test_storage_under_a_file_is_refused(tmp_path: Path, phantom_dir: Path) -> None:
    (tmp_path / "a-file").write_text("")
    line = refused(tmp_path, phantom_dir, "--storage", str(tmp_path / "a-file" / "studies"))
    assert f"{tmp_path / 'a-file'} is not a folder" in line


@pytest.mark.parametrize("flag", ["--mlflow-uri", "--optuna-storage"])
def test_a_database_server_that_does_not_answer_is_one_line_without_its_password(
    tmp_path: Path, phantom_dir: Path, flag: str
) -> None:
    line = refused(tmp_path, phantom_dir, flag, "postgresql://flair:hush-hush@127.0.0.1:1/x")
    assert f"{flag} postgresql://flair" in line and "127.0.0.1:1 does not answer" in line
    assert "hush-hush" not in line


def test_a_probe_leaves_nothing_and_a_missing_folder_is_tried_at_its_parent(
    tmp_path: Path,
) -> None:
    outputs.writable_folder(tmp_path / "to" / "be" / "made", "--storage", "x")
    outputs.writable_file(str(tmp_path / "new" / "summary.json"), "--json")
    assert os.listdir(tmp_path) == []


def test_a_sqlite_stores_artifacts_sit_beside_it_whatever_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from study import tracking
    from study.schema import client

    (tmp_path / "store").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    experiment = tracking.open_experiment(uri, "combo alpha")
    c = client(uri)
    where = c.get_experiment(experiment).artifact_location
    assert where == (tmp_path / "store" / "mlruns" / "combo_alpha").as_uri()
    run = c.create_run(experiment)
    (tmp_path / "note.txt").write_text("x")
    c.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert list((tmp_path / "store" / "mlruns").rglob("note.txt"))
    assert os.listdir(tmp_path / "elsewhere") == []
