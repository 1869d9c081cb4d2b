"""Studies from Python (a notebook): the flags of `python -m study.run` as keywords, a typed
result, and an existing study's results opened without running anything.

    from study import api

    result = api.run("combo_alpha", trials=4, image_size=32, max_epochs=3)
    result.best_trial, result.best_value, result.scores["test_iou"], result.report
    frame = result.trials()              # one row per trial (study.export.trials_frame)
    again = api.open("combo_alpha")      # the study's latest invocation, from MLflow

`run` is the command line's own path (`study.cli.execute`), so a study run here prints,
records and ends exactly as one run from the shell: a keyword is the flag of the same name
(`max_epochs=3` is `--max-epochs 3`; True a bare flag; `confirm=False`, `register=False`,
`fuse=False` their `--no-` forms). A bad setting raises the project's `ConfigError` with
the line the command prints. Ctrl+C stops the study as on the command line (the trials
stop at their checkpoints, the invocation is recorded interrupted) and then raises
KeyboardInterrupt: the kernel goes on, and `run(..., resume=True)` finishes it. Each run
ends the Ray it started, so a second study in the same process starts its own.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flairseg.errors import ConfigError
from study import schema, secrets
from study.schema import Artifact, Param, Role, Tag

NO_FLAGS = {"confirm": "--no-confirm", "register": "--no-register", "fuse": "--no-fuse"}
OUTCOMES = {"done": "finished", "interrupted": "interrupted", "failed": "failed"}


@dataclass(frozen=True)
class StudyResult:
    """One invocation of a study, as its stores hold it."""

    study: str
    invocation: int
    outcome: str  # finished | interrupted | failed | running (as the parent run ended)
    objective: str
    mode: str
    best_trial: int | None  # the study's answer: confirmed winner, front's answer or best
    best_value: float | None
    best_config: dict[str, Any]
    scores: dict[str, float]  # val_* and test_* of the answer, as the study scored them
    trial_counts: dict[str, int]  # this invocation's trials by how they ended
    confirmation: dict[str, Any] | None  # the paired comparison (study.confirm), if any
    front: dict[str, Any] | None  # quality against cost (study.front), if the search has one
    registry: str | None  # what the model registry did (study.register)
    mlflow_uri: str
    experiment: str
    parent_run: str
    report: str | None  # the report's path, when it is there
    summary: dict[str, Any] = field(repr=False, default_factory=dict)  # summary.json whole
    exit_status: int | None = None  # of `run`; None from `open`

    def trials(self) -> Any:
        """The study's trials as a pandas DataFrame (study.export.trials_frame)."""
        from study.export import trials_frame

        return trials_frame(self.mlflow_uri, self.experiment, self.study)


def argv_of(search: str, settings: dict[str, Any]) -> list[str]:
    """The command line a call stands for; an unknown setting is a ConfigError."""
    from study.cli import build_parser

    known = {a.dest: a for a in build_parser()._actions if a.option_strings}
    argv = ["--search", search]
    for key, value in settings.items():
        if key not in known or key in ("search", "help", "list"):
            raise ConfigError(f"run(): unknown setting {key!r} (the flags of python -m study.run)")
        flag = known[key].option_strings[0]
        if value is None:
            continue
        if value is False and key in NO_FLAGS:
            argv.append(NO_FLAGS[key])
        elif isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def run(search: str, **settings: Any) -> StudyResult:
    """Run a study (resume=True: finish one) as `python -m study.run` would.

    Returns its invocation's result; a keyword is the flag of the same name."""
    from study.cli import build_parser, execute

    with tempfile.TemporaryDirectory(prefix="flairseg-api-") as folder:
        # the summary, read back from a file unless the caller named one
        target = Path(settings.setdefault("json", str(Path(folder) / "summary.json")))
        args = parsed(build_parser(), argv_of(search, settings))
        saved = _signal_handlers()
        try:
            status, plan = execute(args)
        finally:
            _end_ray()
            _signal_handlers(saved)
        summary = json.loads(target.read_text()) if target.is_file() else None
    if status == 130:  # Ctrl+C: recorded and said; the caller's Ctrl+C goes on up
        raise KeyboardInterrupt
    assert plan is not None  # a study refused before its plan raised ConfigError
    if status == 3:  # the line the command printed said it; nothing to read back now
        raise ConfigError(
            f"MLflow at {secrets.redact(plan.mlflow_uri)} did not answer by the end: the "
            "trials ended; once it answers, finish with run(..., resume=True)"
        )
    return open(
        plan.study_name,
        experiment=plan.experiment,
        mlflow_uri=plan.mlflow_uri,
        exit_status=status,
        summary=summary,
    )


def parsed(parser: Any, argv: list[str]) -> Any:
    """The flags parsed as the command line parses them; a bad value is a ConfigError with
    argparse's line (it would exit the process)."""
    import contextlib
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = parser.parse_args(argv)
    except SystemExit:
        line = said.getvalue().strip().splitlines()
        raise ConfigError(line[-1] if line else f"run(): bad settings {argv}") from None
    args.argv = argv  # what the parent run records as its command
    return args


def _signal_handlers(saved: dict | None = None) -> dict:
    """This process's SIGTERM and SIGHUP handlers (a study pauses on them: study.stops),
    put back as they were when `saved`; the main thread's only, as Python allows."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    if saved is None:
        return {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    return saved


def _end_ray() -> None:
    """End the Ray this run started or joined (a second study starts its own)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def open(  # noqa: A001 - the API's verb: open a study's results
    study: str,
    *,
    experiment: str | None = None,
    mlflow_uri: str | None = None,
    invocation: int | None = None,
    exit_status: int | None = None,
    summary: dict[str, Any] | None = None,
) -> StudyResult:
    """An existing study's invocation (the latest unless `invocation`), from MLflow: nothing
    runs. `experiment` defaults to the study's name, `mlflow_uri` to the default store."""
    uri = mlflow_uri or schema.default_uri()
    experiment = experiment or study
    c = schema.client(uri)
    exp = schema.experiment_named(c, uri, experiment)
    parents = schema.study_runs(c, exp.experiment_id, study, role=Role.STUDY)
    if invocation is not None:
        parents = [p for p in parents if p.data.tags.get(Tag.INVOCATION) == str(invocation)]
    if not parents:
        which = f"invocation #{invocation} of " if invocation is not None else ""
        raise ConfigError(f"open(): no {which}study {study} in experiment {experiment} at {uri}")
    parent = max(parents, key=lambda p: int(p.data.tags.get(Tag.INVOCATION, 0)))
    if summary is None:
        summary = _logged_summary(c, parent.info.run_id)
    return _result(study, uri, experiment, parent, summary or {}, exit_status)


def _logged_summary(c: Any, run_id: str) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory(prefix="flairseg-api-") as folder:
        try:
            path = Path(c.download_artifacts(run_id, Artifact.SUMMARY, folder))
            return json.loads(path.read_text())
        except Exception:  # an invocation that ended before its summary: no scores
            return None


def _result(
    study: str, uri: str, experiment: str, parent: Any, summary: dict, status: int | None
) -> StudyResult:
    tags, params = parent.data.tags, parent.data.params
    metric, mode = schema.load_objective(params.get(Param.OBJECTIVE))
    ended = {"FINISHED": "finished", "KILLED": "interrupted", "FAILED": "failed"}
    outcome = ended.get(parent.info.status, "running")
    report = Path(tags[Tag.RESULTS]) / Artifact.REPORT if Tag.RESULTS in tags else None
    scores = {
        k: float(v)
        for k, v in summary.items()
        if k.startswith(("val_", "test_")) and isinstance(v, int | float)
    }
    return StudyResult(
        study=study,
        invocation=int(tags.get(Tag.INVOCATION, 0)),
        outcome=outcome,
        objective=metric,
        mode=mode,
        best_trial=summary.get("best_trial"),
        best_value=scores.get(metric),
        best_config=summary.get("best_config") or {},
        scores=scores,
        trial_counts=summary.get("trials") or {},
        confirmation=summary.get("confirmation"),
        front=summary.get("front"),
        registry=summary.get("registry"),
        mlflow_uri=uri,
        experiment=experiment,
        parent_run=parent.info.run_id,
        report=str(report) if report is not None and report.is_file() else None,
        summary=summary,
        exit_status=status,
    )
