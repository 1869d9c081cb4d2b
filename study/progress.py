"""The driver's Tune callback that prints the console's progress: one line per trial that
ends, and a status line every `status_every` seconds (it replaces Ray's status table,
printed every few seconds)."""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from study import budget, schema
from study.schema import Status
from study.trial_names import SearchTrials, ending, error_line, say, unrecorded

STATUS_EVERY_S = 30.0


class Progress(Callback):
    """A line as each trial ends (how, and its score: `names` says what it is called), and
    a status line now and then (`[2m05s] 3/8 trials done (...), 2 running; best ...`)."""

    def __init__(
        self,
        names: SearchTrials,
        metric: str,
        mode: str,
        total: int,
        status_every: float = STATUS_EVERY_S,
        study_best: float | None = None,
    ) -> None:
        self.names = names
        self.metric = metric
        self.mode = mode
        self.total = total
        self.status_every = status_every
        self.study_best = study_best  # the study's best objective before this invocation
        self._started = time.monotonic()
        self._last_status = time.monotonic()
        self._done: dict[Any, tuple[str, float | None]] = {}
        self._live: set[str] = set()  # the trials started in this driver

    def setup(self, **info: Any) -> None:
        self._started = self._last_status = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._live.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        status, text, _ = ending(trial, self.names.config_of(trial))
        value = (trial.last_result or {}).get(self.metric)
        self._done[self.names.key_of(trial)] = (status, value)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, float) else "no score"
        say(f"trial {self.names.label(trial)}: {text}, {shown}")
        self._maybe_status(trials, force=False)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The trials a time budget's end stopped (study.trial_names.unrecorded): each
        said, stopped by the budget at its last epoch."""
        if not budget.cut():
            return
        for trial in trials:
            if unrecorded(trial, self._done, self._live, self.names):
                self.on_trial_complete(0, trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        self._done[self.names.key_of(trial)] = (Status.FAILED, None)
        label = self.names.label(trial)
        say(f"trial {label}: failed after {epoch} epochs: {error_line(trial)}")
        self._maybe_status(trials, force=False)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._maybe_status(trials, force=False)

    def _pick(self, scores: list[float]) -> float:
        return max(scores) if self.mode == "max" else min(scores)

    def _maybe_status(self, trials: list, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.status_every:
            return
        self._last_status = now
        running = sum(t.status == "RUNNING" for t in trials)
        finished = [s for s, _ in self._done.values()]
        stopped = sum(schema.is_stopped(s) for s in finished)
        failed = sum(s == Status.FAILED for s in finished)
        scores = [v for _, v in self._done.values() if isinstance(v, float) and math.isfinite(v)]
        bests = [f"this invocation {self._pick(scores):.4f}"] if scores else []
        if self.study_best is not None:
            bests.append(f"the study before it {self.study_best:.4f}")
        best = f"; best {self.metric}: " + ", ".join(bests) if bests else ""
        elapsed = int(now - self._started)
        say(
            f"[{elapsed // 60}m{elapsed % 60:02d}s] {len(finished)}/{self.total} trials done "
            f"({stopped} stopped early, {failed} failed), {running} running{best}"
        )
