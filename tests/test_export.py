"""A study's trials as a DataFrame and a file (study.export), checked against MLflow run by
run, in a real SQLite tracking store written by MLflow's client."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from test_report_readable import EXPERIMENT, GROUPS, STUDY, make_store

from study.export import main, trials_frame
from study.schema import Param, Tag
from tests.inproc import call_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_store(tmp_path_factory.mktemp("export"))


def test_the_frame_holds_what_mlflow_holds_trial_by_trial(store: str) -> None:
    from mlflow.tracking import MlflowClient

    frame = trials_frame(store, EXPERIMENT, STUDY)
    assert frame.attrs == {"study": STUDY, "objective": "val_iou", "mode": "max"}
    assert list(frame["trial"]) == list(range(sum(n for *_, n in GROUPS)))
    c = MlflowClient(store)
    for row in frame.to_dict(orient="records"):
        run = c.get_run(row["run_id"])
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert row["trial"] == int(tags[Tag.OPTUNA_TRIAL])
        assert row["parent_run_id"] == tags[Tag.PARENT]
        assert (row["run_status"], row["status"]) == (run.info.status, tags[Tag.STATUS])
        assert (row["model"], row["loss"]) == (tags[Tag.MODEL], tags[Tag.LOSS])
        assert row["epochs"] == int(tags[Tag.EPOCHS])
        assert row["planned_epochs"] == int(tags[Tag.PLANNED_EPOCHS])
        for key, value in params.items():
            got = row[f"params.{key}"]
            assert str(got) == value or got == pytest.approx(float(value)), key
        for key, value in metrics.items():
            assert row[f"metrics.{key}"] == value, key
        history = [m.value for m in c.get_metric_history(row["run_id"], "val_iou")]
        assert row["objective_last"] == metrics["val_iou"]
        assert row["objective_best"] == max(history)
    assert frame["params.lr"].dtype.kind == "f"  # a number column holds numbers
    assert any(c.startswith(f"params.{Param.SAMPLED_PREFIX}") for c in frame.columns)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_each_format_reads_back_equal(store: str, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"trials.{fmt}"
    main(["--study", STUDY, "--experiment", EXPERIMENT, "--mlflow-uri", store,
          "--format", fmt, "--out", str(out)])  # fmt: skip
    read = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": pd.read_json}[fmt]
    back = read(out)
    want = trials_frame(store, EXPERIMENT, STUDY)
    assert list(back.columns) == list(want.columns)
    pd.testing.assert_frame_equal(back, want, check_dtype=False)


def test_without_out_the_table_goes_to_standard_output(store: str) -> None:
    result = call_cli(
        "study.export", "--study", STUDY, "--experiment", EXPERIMENT, "--mlflow-uri", store,
        cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    back = pd.read_csv(io.StringIO(result.stdout))
    assert len(back) == sum(n for *_, n in GROUPS) and "objective_best" in back.columns


@pytest.mark.parametrize(
    "args, message",
    [
        (["--study", "nope", "--experiment", EXPERIMENT], "study nope"),
        (["--study", STUDY, "--experiment", "nope"], "--experiment nope: no such experiment"),
        (["--study", STUDY, "--format", "xlsx"], "--format"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    store: str, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "t.csv"
    result = call_cli("study.export", *args, "--mlflow-uri", store, "--out", str(out), cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or "usage" in result.stderr
    assert not out.exists()
