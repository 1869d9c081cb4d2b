"""The live view: optuna-dashboard on a study's Optuna storage shows each trial's params,
its per-epoch objective as intermediate values and its state (PRUNED where ASHA stopped it,
FAIL where it failed) while the study runs; the banner says how to start it.

The fast tests drive the real searcher's hooks with the results Tune hands it; the slow one
runs a real study, a real optuna-dashboard server on its storage and headless Chromium.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from browser import FLAGS, chromium
from study_helpers import HOPELESS, StudyEnv, wait_for, write_search

from study import adapters, console, ledger, secrets
from study.searcher import StudySearch

State = optuna.trial.TrialState
SPACE = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}


def _searcher(tmp_path: Path, study_name: str = "s") -> StudySearch:
    storage = ledger.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return StudySearch(
        experiment_path=str(tmp_path / "run-1"),
        space=SPACE,
        metric="val_loss",
        mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name=study_name,
        storage=storage,
    )


def _epoch(epoch: int, value: float, planned: int) -> dict:
    """A result as Tune hands it to the searcher: the trial's report, flattened."""
    return {"val_loss": value, "epoch": epoch, "planned_epochs": planned, "training_iteration": 1}


def test_each_trial_ends_in_the_state_the_live_view_shows(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    for tid in ("done", "stopped", "failed", "late"):
        assert searcher.suggest(tid) is not None
    curves = {"done": [0.9, 0.5, 0.4], "stopped": [0.8, 0.3], "failed": [0.7, 0.6], "late": [0.6]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from Optuna about a step given twice
        for tid, curve in curves.items():
            # Tune keeps the result its scheduler stopped a trial on from the searcher
            for epoch, value in enumerate(curve[:-1], start=1):
                searcher.on_trial_result(tid, _epoch(epoch, value, planned=3))
        searcher.on_trial_result("done", _epoch(3, 0.4, planned=3))  # FIFO: it was passed on
        searcher.on_trial_complete("done", result=_epoch(3, 0.4, planned=3))
        searcher.on_trial_complete("stopped", result=_epoch(2, 0.3, planned=3))
        searcher.on_trial_complete("failed", error=True)
        searcher.on_trial_complete("stopped", result=_epoch(2, 0.3, planned=3))  # twice: ignored
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    done, stopped, failed, late = study.trials
    assert (done.state, stopped.state, failed.state, late.state) == (
        State.COMPLETE,
        State.PRUNED,
        State.FAIL,
        State.RUNNING,
    )
    assert done.intermediate_values == {1: 0.9, 2: 0.5, 3: 0.4} and done.value == 0.4
    # the epoch ASHA stopped it at is there too, and is its value, as COMPLETE gave it
    assert stopped.intermediate_values == {1: 0.8, 2: 0.3} and stopped.value == 0.3
    assert stopped.user_attrs == {"status": "stopped at epoch 2"}
    assert failed.value is None and failed.intermediate_values == {1: 0.7}
    assert "stopped" in adapters.searcher_completed(searcher)
    # the study's best counts the stopped trial with its last value, as before
    assert ledger.best_trial(study).number == stopped.number


def test_the_best_trial_is_chosen_as_before(tmp_path: Path) -> None:
    """COMPLETE trials and ASHA-stopped PRUNED ones by value, ties to the earliest; a PRUNED
    trial that ASHA did not stop (removed before it ran) never; none: None."""
    study = optuna.create_study(direction="maximize")
    assert ledger.best_trial(study) is None

    def add(state: State, last: float, status: str | None = None) -> None:
        trial = study.ask()
        trial.report(last, 1)
        if status:
            trial.set_user_attr("status", status)
        study.tell(trial, last if state == State.COMPLETE else None, state=state)

    add(State.PRUNED, 0.99)  # not stopped by ASHA: not a candidate
    add(State.COMPLETE, 0.5)
    add(State.PRUNED, 0.7, "stopped at epoch 1")
    add(State.COMPLETE, 0.7)
    assert [t.value for t in study.trials] == [0.99, 0.5, 0.7, 0.7]  # Optuna's own rule
    assert ledger.best_trial(study).number == 2  # 0.7, the earlier of the two
    add(State.COMPLETE, 0.8)
    assert ledger.best_trial(study).number == study.best_trial.number == 4


def test_the_banner_says_how_to_watch_the_study_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}"
    installed = Path(sys.executable).parent / "optuna-dashboard"
    for here, shown in (  # in the project's folder as the README has it, and elsewhere
        (installed.parents[2], str(installed.relative_to(installed.parents[2]))),
        (tmp_path, str(installed)),
    ):
        monkeypatch.chdir(here)
        line = console.live_view(url)
        assert "\n" not in line and line.startswith("  live view: ")
        command = shlex.split(line.split("live view: ", 1)[1].split("  (then", 1)[0])
        assert command == [shown, url]
        assert os.access(here / command[0], os.X_OK)  # the slow test below runs it

    password = "pw:s3cr@t"
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))  # what `take` sets goes back
    clean = secrets.take("postgresql://flair:pw%3As3cr%40t@db:5432/optuna", "--optuna-storage")
    line = console.live_view(clean)
    assert line.endswith(' "$OPTUNA_STORAGE"  (then open http://127.0.0.1:8080)'), line
    assert password not in line and "pw%3A" not in line
    no_password = "postgresql://flair@other:5432/optuna"  # libpq finds it in ~/.pgpass
    assert console.live_view(no_password).endswith(
        f" {no_password}  (then open http://127.0.0.1:8080)"
    )

    elsewhere = tmp_path / "venv" / "bin"  # an environment without optuna-dashboard
    monkeypatch.setattr(sys, "executable", str(elsewhere / "python"))
    line = console.live_view(url)  # in tmp_path: the project's source named by its path
    assert "\n" not in line and "not installed" in line, line
    project = Path(console.__file__).resolve().parents[1]
    assert f"venv/bin/pip install -e '{project}[live]', then venv/bin/optuna-dashboard " in line
    monkeypatch.chdir(project)
    assert f"{elsewhere / 'pip'} install -e '.[live]', then " in console.live_view(url)


# the ASHA test's search (two configs learn, four cannot: ASHA stops those at epoch 1), with
# epochs enough for the learning ones that the study still runs while the page is read
LIVE = 'description: "a study watched live"\n' + HOPELESS.replace(
    "max_epochs: 4,", "max_epochs: 12,"
)
PLANNED = 6


@pytest.mark.slow
def test_a_running_study_is_watched_live_in_optuna_dashboard(
    tmp_path: Path, phantom_dir: Path
) -> None:
    assert "max_epochs: 12," in LIVE
    browser = chromium()  # skips (or fails, with FLAIRSEG_REQUIRE_BROWSER) without one
    env = StudyEnv(tmp_path, phantom_dir)
    out = tmp_path / "summary.json"
    proc, log = env.start(
        "--search", str(write_search(tmp_path / "live.yaml", LIVE)), "--json", str(out)
    )
    try:
        wait_for(log, "live view: ", proc)  # the banner: the study is in its storage
        command = _banner_command(log.read_text())
        assert command[-1] == env.optuna_url, command
        number = _wait_for_live_values(env, proc)
        study_id = ledger.open_storage(env.optuna_url).get_study_id_from_name("live")
        with _dashboard(command, env.root) as base:
            # a trial can end between finding it running and the page's render (a busy
            # machine renders slowly): then the next running trial is read, while any is.
            # The dashboard keeps a study's trials for 2 s (its cache for small studies): a
            # page read just after the last can show a running trial without the values the
            # storage has for it; then it is read again, until the study ends
            for _ in range(4 * PLANNED):
                page = f"{base}/dashboard/studies/{study_id}/trials?numbers={number}"
                dom = _render(browser, page)
                ended = [t for t in env.study("live").trials if t.state.is_finished()]
                assert proc.poll() is None and len(ended) < PLANNED, "the study ended first"
                state, shown, params = _trial_page(dom, number)
                if state == "Running" and shown:
                    break
                if state != "Running":
                    number = _wait_for_live_values(env, proc)
            trial = env.study("live").trials[number]
            assert state == "Running", dom[-3000:]  # read while the trial trained
            assert shown, dom[-3000:]
            assert shown == pytest.approx({s: trial.intermediate_values[s] for s in shown})
            (name, value), *more = (p.split() for p in params)
            assert (name, float(value), more) == ("lr", trial.params["lr"], [])

            assert proc.wait(timeout=1200) == 0, log.read_text()
            pruned = [t for t in env.study("live").trials if t.state == State.PRUNED]
            assert pruned, log.read_text()
            page = f"{base}/dashboard/studies/{study_id}/trials?numbers={pruned[0].number}"
            state, shown, _ = _trial_page(_render(browser, page), pruned[0].number)
            assert state == "Pruned" and shown == pytest.approx(pruned[0].intermediate_values)
    finally:
        _stop(proc)
    _assert_states_match_mlflow_and_summary(env, json.loads(out.read_text()))


def _assert_states_match_mlflow_and_summary(env: StudyEnv, summary: dict) -> None:
    """ASHA-stopped trials are PRUNED with every epoch as an intermediate value and the last
    as their value; the summary counts and the best trial mean what they meant before."""
    study = env.study("live")
    states = Counter(t.state for t in study.trials)
    assert set(states) == {State.COMPLETE, State.PRUNED} and sum(states.values()) == PLANNED
    runs = {
        int(r.data.tags["optuna_trial"]): r
        for r in env.runs("live")
        if r.data.tags.get("role") == "trial"
    }
    for trial in study.trials:
        tags, metrics = runs[trial.number].data.tags, runs[trial.number].data.metrics
        epochs = int(tags["epochs"])
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1)), trial
        assert trial.value == pytest.approx(metrics["val_loss"], abs=1e-9)
        assert trial.value == trial.intermediate_values[epochs]
        if trial.state == State.PRUNED:  # stopped by ASHA: said alike in Optuna and MLflow
            assert trial.user_attrs["status"] == tags["status"] == f"stopped at epoch {epochs}"
        else:
            assert tags["status"] == "completed" and epochs == 12
    stopped_lrs = [t.params["lr"] for t in study.trials if t.state == State.PRUNED]
    assert stopped_lrs.count(1e-7) >= 2, stopped_lrs
    assert summary["trials"] == {
        "completed": states[State.COMPLETE],
        "stopped": states[State.PRUNED],
    }
    best = ledger.best_trial(study)
    scored = [t for t in study.trials if t.value is not None]
    assert best.number == min(scored, key=lambda t: (t.value, t.number)).number
    assert summary["best_trial"] == best.number and summary["best_config"]["lr"] == 0.003
    assert summary["val_loss"] == pytest.approx(best.value, abs=1e-5)


def _banner_command(text: str) -> list[str]:
    """The banner's live-view command, as a user would copy it."""
    (line,) = [ln for ln in text.splitlines() if ln.startswith("  live view: ")]
    return shlex.split(line.split("live view: ", 1)[1].split("  (then", 1)[0])


def _wait_for_live_values(env: StudyEnv, proc: subprocess.Popen, timeout: float = 900) -> int:
    """The number of a RUNNING trial that has intermediate values in the storage."""
    deadline = time.monotonic() + timeout
    study = env.study("live")
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before a trial reported an epoch"
        for t in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
            if t.intermediate_values:
                return t.number
        time.sleep(0.2)
    raise AssertionError(f"no running trial with intermediate values in {timeout} s")


@contextlib.contextmanager
def _dashboard(command: list[str], cwd: Path) -> Iterator[str]:
    """The banner's command, serving on a free port of 127.0.0.1 until the block ends
    (wsgiref: one process, nothing of gunicorn's left behind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    argv = [*command, "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref"]
    with tempfile.TemporaryFile() as output:
        server = subprocess.Popen(argv, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600  # an outer limit: a busy machine starts it slowly
            while True:
                if server.poll() is not None:
                    output.seek(0)
                    raise AssertionError(f"optuna-dashboard exited: {output.read().decode()}")
                try:
                    with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 600 s"
                time.sleep(0.2)
            yield base
        finally:
            _stop(server, signal.SIGTERM)


def _render(browser: str, url: str) -> str:
    """The page after its JavaScript ran (the dashboard is a React app), as DOM text."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", "--window-size=1400,900",
             "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _trial_page(dom: str, number: int) -> tuple[str, dict[int, float], list[str]]:
    """What the trial page shows of trial `number`: its state chip, its intermediate
    values ("STEP VALUE" lines) and its parameters ("NAME VALUE" lines)."""
    head = re.search(
        rf">Trial {number} \(trial_id=\d+\)</h4>.*?MuiChip-label[^>]*>(\w+)</span>", dom, re.S
    )
    assert head, dom[-3000:]

    def lines(section: str, following: str) -> list[str]:
        found = re.search(rf">{section}</p>(.*?)>{following}</p>", dom, re.S)
        assert found, (section, dom[-3000:])
        return [html.unescape(x).strip() for x in re.findall(r"<p[^>]*>([^<]*)</p>", found[1])]

    values = {}
    for text in lines("Intermediate Values", "Parameter"):
        step, value = text.split()
        values[int(step)] = float(value)
    return head[1], values, lines("Parameter", "Started At")


def _stop(proc: subprocess.Popen, sig: signal.Signals = signal.SIGINT) -> None:
    """End a process this test started, also when the test failed: `sig`, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
