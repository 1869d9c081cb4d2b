"""Cross-validated studies (`--folds K`, `cv: {folds: K}`) through `python -m study.run`:
real Ray Tune, Optuna, ASHA and a SQLite MLflow store, on the phantom's real TIFFs.

Tiny: 32 px, 8-wide U-Nets, K = 2, a few epochs.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from pathlib import Path

import optuna
import pytest
from study_helpers import HOPELESS, StudyEnv, wait_for, write_search

from study.schema import METRIC_KEYS

# the ASHA test's search, cross-validated: two configs learn, four cannot (with fewer, a
# config that cannot learn may tie the median at the first rung and go on)
CV_ASHA = (
    'description: "a cross-validated study where half the configs cannot learn"\n'
    + HOPELESS
    + "cv: {folds: 2}\n"
)


@pytest.mark.slow
def test_a_cross_validated_study_ranks_and_stops_on_the_fold_mean(
    tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    search = write_search(tmp_path / "cv.yaml", CV_ASHA)
    out = tmp_path / "summary.json"
    result = env.run("--search", str(search), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "10 patients in 2 folds" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["folds"] == 2
    assert set(summary["split"]) == {"fold 1", "fold 2", "test"}
    # ASHA stopped the configs that cannot learn, on the fold mean it was given
    assert summary["trials"].get("stopped", 0) >= 2, summary
    assert summary["best_config"]["lr"] == 0.003
    for key in ("test_iou", "test_iou_single", "test_iou_single_std", "fold2/test_iou"):
        assert key in summary
    singles = [summary[f"fold{k}/test_iou"] for k in (1, 2)]
    assert summary["test_iou_single"] == pytest.approx(statistics.mean(singles))

    runs = env.runs("cv")
    (parent,) = [r for r in runs if r.data.tags.get("role") == "study"]
    assert parent.data.tags["folds"] == "2" and parent.data.params["folds"] == "2"
    assert set(json.loads(parent.data.tags["split"])) == {"fold 1", "fold 2", "test"}
    kids = [r for r in runs if r.data.tags.get("role") == "trial"]
    study = {t.number: t for t in env.study("cv").trials}
    c = env.client()
    for kid in kids:
        assert kid.data.tags["folds"] == "2"
        for key in METRIC_KEYS:  # every logged mean is the mean of its logged folds
            mean = {m.step: m.value for m in c.get_metric_history(kid.info.run_id, key)}
            folds = [
                {m.step: m.value for m in c.get_metric_history(kid.info.run_id, f"fold{k}/{key}")}
                for k in (1, 2)
            ]
            spread = {m.step: m.value for m in c.get_metric_history(kid.info.run_id, f"{key}_std")}
            assert sorted(mean) == sorted(folds[0]) == sorted(folds[1]) == sorted(spread)
            assert sorted(mean) == list(range(1, int(kid.data.tags["epochs"]) + 1))
            for step in mean:
                pair = [folds[0][step], folds[1][step]]
                assert mean[step] == pytest.approx(statistics.mean(pair), abs=1e-9)
                assert spread[step] == pytest.approx(statistics.stdev(pair), abs=1e-9)
        # what Optuna ranked is the fold mean of the trial's last epoch
        trial = study[int(kid.data.tags["optuna_trial"])]
        assert trial.value == pytest.approx(kid.data.metrics["val_loss"], abs=1e-9)
    stopped = [r for r in kids if r.data.tags["status"].startswith("stopped at epoch")]
    assert stopped and all(r.data.params["lr"] == "1e-07" for r in stopped)


def _wait_for_epoch(env: StudyEnv, trial: int, proc, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the driver exited early"
        for run in env.runs("combo_alpha"):
            tags = run.data.tags
            if tags.get("optuna_trial") == str(trial) and tags.get("epochs_logged"):
                return
        time.sleep(0.3)
    raise AssertionError(f"trial {trial} logged no epoch in {timeout} s")


@pytest.mark.slow
def test_sigkill_then_resume_continues_every_fold(tmp_path: Path, phantom_dir: Path) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    args = ("--search", "combo_alpha", "--image-size", "32", "--concurrency", "1")
    args += ("--trials", "2", "--max-epochs", "3", "--folds", "2")
    proc, log = env.start(*args)
    wait_for(log, "trial #0 ", proc)
    _wait_for_epoch(env, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=600)
    resumed = env.run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = env.runs("combo_alpha")
    kids = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert sorted(int(r.data.tags["optuna_trial"]) for r in kids) == [0, 1]  # no duplicate
    c = env.client()
    for kid in kids:
        epochs = int(kid.data.tags["epochs"])
        for key in ("val_iou", "fold1/val_iou", "fold2/val_iou", "val_iou_std"):
            steps = [m.step for m in c.get_metric_history(kid.info.run_id, key)]
            assert steps == list(range(1, epochs + 1)), (key, steps)  # none lost, none twice
    (interrupted,) = [k for k in kids if k.data.tags["optuna_trial"] == "1"]
    assert int(interrupted.data.tags["resumed_from_epoch"]) >= 1  # went on, both folds
    # trial #0 ended before the kill, maybe after Tune last saved its state (study.settled):
    # its run ends once, as Optuna recorded it, and Optuna holds both trials ended
    (first,) = [k for k in kids if k.data.tags["optuna_trial"] == "0"]
    assert (first.data.tags["status"], first.data.tags["epochs"]) == ("completed", "3")
    assert first.info.status == "FINISHED"
    study = optuna.load_study(study_name="combo_alpha", storage=env.optuna_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


def test_folds_out_of_range_end_in_one_line_before_anything_is_written(
    tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    tiny = ("--search", "combo_alpha", "--image-size", "32")
    for folds, wanted in (("1", "--folds 1: must be at least 2"), ("11", "--folds 11: only 10")):
        code, out, err = env.run_here(*tiny, "--folds", folds)
        assert code == 2, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and wanted in lines[0], err
    bad = write_search(tmp_path / "bad.yaml", CV_ASHA.replace("folds: 2", "folds: 1"))
    code, _, err = env.run_here("--search", str(bad))
    assert code == 2 and "cv.folds: 1 must be a whole number, at least 2" in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "studies").exists()
