"""ASHA's decisions in a fixed order of trials, whatever order their results arrive in.

Ray's ASHAScheduler decides a trial's fate at a rung against the values recorded at that
rung so far: the trials that happened to report first. With two trials at a time, a trial
slowed by the machine's load changes what ASHA stops, so the same command gave other
answers. Here the same rule (Ray's own ASHAScheduler, fed by hand) sees the trials in the
order of their Optuna numbers: trial i's decision at rung r is taken against the values
at r of every earlier trial of the invocation that reached r, and waits for an earlier
trial still on its way there. Timing changes how long a study takes, never what it
answers.

The referee is a Ray actor (`Referee`), named per invocation, so trials on any node ask
it. The driver registers each trial as it is proposed and tells it when a trial ends
(with the trial's per-epoch objective from Optuna, so a trial that died between its
report and its question is settled alike); a trial reports its value at each rung and
waits for the answer (`ask`). On `--resume`, `seed` rebuilds the referee from Optuna's
record of the invocation's trials; the resumed trials send their rung values again.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

STOP, GO = "stop", "go"
ASK_BACKOFF_S = (0.05, 1.0)  # a trial's waits between asks: first and longest


@dataclass(frozen=True)
class Rungs:
    """What a trial needs to ask the referee: its name, the objective, the rung epochs."""

    referee: str
    metric: str
    epochs: tuple[int, ...]


def asha_scheduler(
    max_epochs: int,
    grace_period: int,
    reduction_factor: float,
    metric: str | None = None,
    mode: str | None = None,
) -> Any:
    """Ray's ASHAScheduler on the epoch counter: the search's (metric and mode from Tune's
    config) and the referee's (fed by hand, so it names them)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=max_epochs,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )


def milestones(max_epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """ASHA's rungs as Ray's `_Bracket` makes them (one bracket, s = 0): grace * rf^k."""
    count = int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor**k) for k in range(max(count, 0))]


class _Stub:
    """What Ray's scheduler reads of a trial: its id."""

    def __init__(self, number: int) -> None:
        self.trial_id = str(number)


class Referee:
    """The decisions of one invocation (a Ray actor: see `start`)."""

    def __init__(
        self, metric: str, mode: str, max_epochs: int, grace_period: int, reduction_factor: float
    ) -> None:
        self._metric = metric
        self._asha = asha_scheduler(max_epochs, grace_period, reduction_factor, metric, mode)
        rungs = milestones(max_epochs, grace_period, reduction_factor)
        self._rungs = [r for r in rungs if r < max_epochs]  # at max_epochs a trial ends anyway
        self._known: list[int] = []  # trial numbers, in order
        self._values: dict[tuple[int, int], float] = {}  # (trial, rung) -> objective
        self._ended: dict[int, int] = {}  # trial -> its last epoch
        self._fed: dict[int, int] = {r: 0 for r in self._rungs}  # rung -> trials settled
        self._decided: dict[tuple[int, int], str] = {}
        self._changed: asyncio.Event | None = None

    def register(self, number: int) -> None:
        """A trial proposed (the driver calls this in proposal order)."""
        if number not in self._known:
            self._known.append(number)
            self._known.sort()
            self._asha.on_trial_add(None, _Stub(number))
        self._advance()

    def record(self, number: int, values: dict[int, float]) -> None:
        """A trial's objective at some epochs (only its rungs are kept)."""
        for epoch, value in values.items():
            if int(epoch) in self._fed:
                self._values.setdefault((number, int(epoch)), float(value))
        self._advance()

    def ended(self, number: int, values: dict[int, float]) -> None:
        """A trial ended (completed, stopped, failed, killed) with these per-epoch
        objectives: it reached the rungs it has a value at, no other."""
        self.register(number)
        self.record(number, values)
        self._ended[number] = max((int(e) for e in values), default=0)
        self._advance()

    async def ask(self, number: int, epoch: int, value: float) -> str | None:
        """STOP or GO for trial `number` at rung `epoch`; None when `epoch` is no rung.
        Waits while an earlier trial has not settled the rung."""
        if epoch not in self._fed:
            return None
        self.register(number)
        self.record(number, {epoch: value})
        while (number, epoch) not in self._decided:
            await self._event().wait()
            self._event().clear()
        return self._decided[(number, epoch)]

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _advance(self) -> None:
        """Feed Ray's ASHA every rung value it can take in trial order, and wake the askers."""
        progressed = False
        for rung in self._rungs:
            while self._fed[rung] < len(self._known):
                number = self._known[self._fed[rung]]
                value = self._values.get((number, rung))
                if value is not None:
                    result = {"epoch": rung, self._metric: value}
                    action = self._asha.on_trial_result(None, _Stub(number), result)
                    self._decided[(number, rung)] = STOP if action == "STOP" else GO
                elif self._ended.get(number, math.inf) >= rung:
                    break  # on its way to the rung (or ended there with its value to come)
                self._fed[rung] += 1
                progressed = True
        if progressed:
            self._event().set()


def actor_name(path: str) -> str:
    """The referee of the invocation whose Tune folder is `path`."""
    return f"flairseg-referee:{path}"


_HELD: dict[str, Any] = {}  # the driver's handles: Ray ends an actor that no handle holds


def start(job: Any, resume_first: int | None = None) -> Any:
    """The invocation's referee (`job`: a study.tuner.TuneJob), a Ray actor that lives as
    long as the driver holds it; on a resume (`resume_first`: the invocation's first trial
    number), told what Optuna holds."""
    import optuna
    import ray

    search = job.search
    actor = ray.remote(num_cpus=0, max_concurrency=1000)(Referee)
    asha = search.asha
    handle = actor.options(name=actor_name(job.path), get_if_exists=True).remote(
        search.metric, search.mode, asha.max_epochs, asha.grace_period, asha.reduction_factor
    )
    _HELD[job.path] = handle
    if resume_first is not None:
        study = optuna.load_study(study_name=job.study_name, storage=job.storage)
        seed(handle, study, resume_first)
    return handle


def handle_named(name: str) -> Any:
    import ray

    return ray.get_actor(name)


def seed(referee: Any, study: Any, first: int) -> None:
    """On --resume: the invocation's trials (Optuna numbers from `first`) as Optuna holds
    them: each registered, an ended one with its epochs, a running one's rung values."""
    import optuna
    import ray

    state = optuna.trial.TrialState
    calls = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.number < first or t.state == state.WAITING:
            continue
        values = dict(t.intermediate_values)
        if t.state == state.RUNNING:
            calls += [referee.register.remote(t.number), referee.record.remote(t.number, values)]
        else:
            calls.append(referee.ended.remote(t.number, values))
    ray.get(calls)


def ask(name: str, number: int, epoch: int, value: float) -> bool:
    """From inside a trial: whether ASHA stops trial `number` at `epoch` (False off a rung).
    Blocks until the referee has decided: the trial holds its slot while it waits."""
    import ray

    return ray.get(handle_named(name).ask.remote(number, epoch, value)) == STOP


def record(name: str, number: int, values: dict[int, float]) -> None:
    """From inside a resumed trial: its objective at the epochs its checkpoint holds."""
    import ray

    ray.get(handle_named(name).record.remote(number, values))
