"""The same command gives the same answer: proposals and ASHA's stops follow the trials'
order (study.ordered, study.referee), and the finalists are confirmed and compared paired
(study.confirm), however the machine's load delays one trial or another."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import optuna
import pytest
from scipy import stats
from study_helpers import StudyEnv, wait_for, write_search

from study import compare
from study.schema import Artifact, Role, Tag

pytestmark = pytest.mark.slow

# val_loss never ties, so ASHA (rungs at epochs 1 and 2) has real decisions to take; two
# trials at a time, TPE from the third trial on
ORDERED = """
objective: {metric: val_loss, mode: min}
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space:
  alpha: {uniform: [0.0, 1.0]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
trials: 6
asha: {max_epochs: 4, grace_period: 1, reduction_factor: 2}
concurrency: 2
sampler: {startup_trials: 2}
confirm: {finalists: 2, seeds: 2}
"""


def _trials(env: StudyEnv, study: str) -> list[tuple]:
    s = optuna.load_study(study_name=study, storage=env.optuna_url)
    return [
        (t.number, t.state.name, t.params, t.value, dict(t.intermediate_values))
        for t in s.get_trials()
    ]


def _run(tmp_path: Path, phantom: Path, name: str, slow: str | None) -> tuple[StudyEnv, dict]:
    env = StudyEnv(tmp_path / name, phantom, confirm=True)
    search = write_search(tmp_path / "ordered.yaml", ORDERED)
    out = tmp_path / f"{name}.json"
    extra = {"FLAIRSEG_TEST_SLOW_TRIAL": slow}
    result = env.run("--search", str(search), "--json", str(out), env_extra=extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return env, json.loads(out.read_text())


def test_a_slowed_trial_changes_nothing_the_study_answers(
    tmp_path: Path, phantom_dir: Path
) -> None:
    quick, first = _run(tmp_path, phantom_dir, "quick", None)
    # trial 0 slowed before each epoch's report: trial 1 reaches every rung first and must
    # wait for it; without the referee it would be judged alone and go on
    slowed, second = _run(tmp_path, phantom_dir, "slowed", "0:3")
    assert _trials(quick, "ordered") == _trials(slowed, "ordered")
    assert first["stopped_at_epoch"] == second["stopped_at_epoch"]
    assert first["trials"].get("stopped", 0) >= 1, first  # ASHA did decide something
    assert first["best_trial"] == second["best_trial"]
    assert first["confirmation"]["winner"] == second["confirmation"]["winner"]
    assert first["confirmation"]["comparisons"] == second["confirmation"]["comparisons"]
    assert first["val_loss"] == second["val_loss"]

    # the comparison artifact holds every finalist's per-patient scores: its statistics
    # are recomputed from them with scipy directly
    runs = quick.runs("ordered")
    (parent,) = [r for r in runs if r.data.tags.get(Tag.ROLE) == Role.STUDY]
    assert parent.data.params["decisions"] == "fixed"
    assert parent.data.tags[Tag.CONFIRMED] == "true"
    record = json.loads(Path(quick.client().download_artifacts(
        parent.info.run_id, Artifact.COMPARISON, str(tmp_path))).read_text())  # fmt: skip
    assert record == first["confirmation"]
    winner = next(f for f in record["finalists"] if f["trial"] == record["winner"])
    for c in record["comparisons"]:
        other = next(f for f in record["finalists"] if f["trial"] == c["trial"])
        names = sorted(winner["patients"])
        d = [winner["patients"][n][c["metric"]] - other["patients"][n][c["metric"]] for n in names]
        assert c["mean_difference"] == pytest.approx(sum(d) / len(d), abs=1e-12)
        if any(d):
            assert c["p_value"] == pytest.approx(stats.wilcoxon(d).pvalue, abs=1e-12)
    assert [p.to_dict() for p in compare.recompute(record)] == [
        {k: v for k, v in c.items() if k != "trial"} for c in record["comparisons"]
    ]
    # each finalist retrained with 2 seeds, as child runs tagged with the trial they confirm
    confirmations = [r for r in runs if r.data.tags.get(Tag.ROLE) == Role.CONFIRMATION]
    assert len(confirmations) == 2 * len(record["finalists"])
    assert {r.data.tags[Tag.CONFIRMS] for r in confirmations} == {
        str(f["trial"]) for f in record["finalists"]
    }
    assert all(r.data.tags[Tag.PARENT] == parent.info.run_id for r in confirmations)
    assert all(r.info.status == "FINISHED" for r in confirmations)
    assert parent.data.tags[Tag.BEST_TRIAL] == str(record["winner"])


# the confirmation stage alone is long enough to be killed in: no ASHA, one trial at a time
CONFIRMED = """
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space:
  alpha: {uniform: [0.0, 1.0]}
trials: 2
asha: {enabled: false, max_epochs: 3}
concurrency: 1
confirm: {finalists: 2, seeds: 2}
"""


def _retrained(run) -> bool:
    return Tag.KEPT not in run.data.tags


def _confirmation_runs(env: StudyEnv) -> list:
    return [r for r in env.runs("confirmed") if r.data.tags.get(Tag.ROLE) == Role.CONFIRMATION]


def test_a_driver_killed_while_confirming_resumes_the_confirmation(
    tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir, confirm=True)
    search = write_search(tmp_path / "confirmed.yaml", CONFIRMED)
    proc, log = env.start("--search", str(search))
    wait_for(log, "confirming the top 2", proc)
    deadline = time.monotonic() + 900  # a safety net: the wait is on the first logged epoch
    while not any(
        _retrained(r) and r.data.tags.get(Tag.EPOCHS_LOGGED) for r in _confirmation_runs(env)
    ):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=600)
    out = tmp_path / "resumed.json"
    resumed = env.run("--search", str(search), "--resume", "--json", str(out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads(out.read_text())
    record = summary["confirmation"]
    assert summary["best_confirmed"] and summary["best_trial"] == record["winner"]
    assert sorted(f["trial"] for f in record["finalists"]) == [0, 1]
    # one run per finalist and seed, each with every epoch logged once, none left running;
    # both trials ran their full budget in the search: seed 0 of each kept, not retrained
    confirmations = _confirmation_runs(env)
    pairs = sorted((r.data.tags[Tag.CONFIRMS], r.data.tags[Tag.REPLICA]) for r in confirmations)
    assert pairs == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")], pairs
    c = env.client()
    for run in confirmations:
        assert run.info.status == "FINISHED", run.data.tags
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_iou")]
        kept = run.data.tags[Tag.REPLICA] == "0"
        assert (Tag.KEPT in run.data.tags) == kept, run.data.tags
        assert steps == ([3] if kept else [1, 2, 3]), (run.data.tags, steps)
    assert "2 trials to train" in resumed.stdout + log.read_text()
    assert "confirmed best of the study" in resumed.stdout
