"""A time budget for an invocation: `--time-budget 8h`, or `time_budget: 8h` in a search file.

Labs plan sweeps in hours of shared GPUs. With a budget, the invocation's wall time (from
the driver's start) is split in three:

- the search: trials are proposed while one more would still reach its first ASHA rung
  (its grace period, at the epochs' median length: it then ends with a value), and
  when the search's share ends Ray Tune stops the running trials (its `Stopper.stop_all`,
  `study.searcher.BudgetStopper`): each keeps its last epoch's checkpoint and value, and is
  recorded `stopped by the time budget at epoch N`;
- the confirmation, if the study confirms: the time its retraining needs at the epochs'
  median length is kept from the search's share when it fits in a third of the budget
  (else the search gets it all); a confirmation that would not fit in what is left is
  skipped, one the budget cuts leaves the answer unconfirmed (both said);
- the close-out (scores, registry, report): the reserve, `reserve()` of the budget.

Once the budget ended the search the invocation is done: `--resume` finds nothing to
finish, a new invocation adds trials. A Ctrl+C pauses the clock: `--resume` gets what was
left. The clock lives in the driver (the searcher and Tune's stopper run there).
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from flairseg.errors import ConfigError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
RESERVE_MIN_S = 30.0  # the close-out's reserve: 5% of the budget, between 30 s and 10 min
RESERVE_SHARE = 0.05
RESERVE_MAX_S = 600.0
CONFIRM_SHARE = 1 / 3  # the most of a budget the search leaves to the confirmation
MIN_BUDGET_S = 60.0  # below it the reserve leaves too little for an epoch (and Ray's start)
MAX_BUDGET_S = 30 * 86400.0
_TEXT = re.compile(r"^(?:\d+(?:\.\d+)?[smhd])+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse(value: Any, label: str) -> float:
    """Seconds from `90s`, `30m`, `8h`, `1h30m` (or a number of seconds); `label` names the
    flag or the file's key in the one-line error."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{label} {value!r}: a duration such as 90s, 30m or 8h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if not _TEXT.match(text):
            shown = str(value)[:40]
            raise ConfigError(f"{label} {shown!r}: a duration such as 90s, 30m or 8h")
        seconds = sum(float(n) * UNITS[u] for n, u in _PART.findall(text))
    if not MIN_BUDGET_S <= seconds <= MAX_BUDGET_S:
        raise ConfigError(
            f"{label} {value}: must be between {describe(MIN_BUDGET_S)} and "
            f"{describe(MAX_BUDGET_S)} (the close-out alone keeps {describe(RESERVE_MIN_S)}; "
            "a shorter budget trains nothing)"
        )
    return seconds


def reserve(seconds: float) -> float:
    """What the close-out keeps of a budget of `seconds`."""
    return min(max(RESERVE_MIN_S, RESERVE_SHARE * seconds), RESERVE_MAX_S)


def describe(seconds: float) -> str:
    """`8h`, `1h30m`, `90s`: the largest units first, whole ones."""
    seconds = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return "".join(parts)


@dataclass
class Clock:
    """The running invocation's budget (driver side)."""

    total: float
    started: float  # time.monotonic() when the driver started
    spent_before: float = 0.0  # by this invocation's earlier, interrupted drivers
    grace: int = 1  # epochs of ASHA's first rung: the least a trial runs
    confirm_epochs: float = 0.0  # the confirmation's epochs per concurrent slot
    phase: str = "search"  # search | confirm
    ended: list[str] = field(default_factory=list)  # the phases the budget cut short
    no_more: bool = False  # the search stopped proposing: one more trial would not fit
    epoch_s: list[float] = field(default_factory=list)

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self.started

    def left(self) -> float:
        """Seconds before the close-out's reserve begins."""
        return self.total - reserve(self.total) - self.spent()

    def epoch(self) -> float | None:
        return statistics.median(self.epoch_s) if self.epoch_s else None

    def confirm_need(self) -> float:
        epoch = self.epoch()
        return self.confirm_epochs * epoch if epoch else 0.0

    def confirm_keep(self) -> float:
        """What the search leaves to the confirmation: its need, when that fits in a third
        of the budget; else nothing (it will be skipped, said: the search gets it all)."""
        need = self.confirm_need()
        return need if need <= CONFIRM_SHARE * (self.total - reserve(self.total)) else 0.0

    def phase_left(self) -> float:
        """Seconds left to the phase running now."""
        keep = self.confirm_keep() if self.phase == "search" else 0.0
        return self.left() - keep

    def trial_need(self) -> float:
        """What a new trial needs to end with a value: its first ASHA rung (the budget
        stops it there or later, at its last epoch, if it goes on)."""
        epoch = self.epoch()
        return self.grace * epoch if epoch else 0.0


_STARTED = time.monotonic()  # the driver's start: study.cli resets it
_CLOCK: list[Clock] = []


def driver_started() -> None:
    """The budget counts from here (study.cli.main, before anything else)."""
    global _STARTED
    _STARTED = time.monotonic()
    _CLOCK.clear()


def start(
    total: float | None,
    spent_before: float = 0.0,
    grace: int = 1,
    confirm_epochs: float = 0.0,
    search_ended: bool = False,
) -> None:
    """Run this invocation under a budget of `total` seconds (None: no budget);
    `search_ended`: an earlier driver of it saw the budget end its search."""
    _CLOCK.clear()
    if total:
        _CLOCK.append(Clock(total, _STARTED, spent_before, grace, confirm_epochs))
        _CLOCK[0].no_more = search_ended


def search_ended() -> bool:
    """Whether the budget ended the search (stopped proposing, or cut its trials)."""
    c = clock()
    return c is not None and (c.no_more or "search" in c.ended)


def paused() -> dict[str, Any]:
    """What an interrupted driver keeps of the budget in the invocation's record."""
    c = clock()
    if c is None:
        return {}
    return {"budget_spent_s": c.spent(), "budget_ended_search": search_ended()}


def clock() -> Clock | None:
    return _CLOCK[0] if _CLOCK else None


def ended() -> bool:
    """Whether the budget ended this invocation's search or confirmation early."""
    return bool(_CLOCK) and (bool(_CLOCK[0].ended) or _CLOCK[0].no_more)


def cut() -> bool:
    """Whether the budget has cut the running phase short (its trials were stopped)."""
    c = clock()
    return c is not None and c.phase in c.ended


def ended_phase(phase: str) -> bool:
    """Whether the budget ended `phase` (search or confirm)."""
    return bool(_CLOCK) and phase in _CLOCK[0].ended


def spent() -> float:
    """Seconds of the budget spent so far (0 without one)."""
    return _CLOCK[0].spent() if _CLOCK else 0.0


def may_start() -> bool:
    """Whether one more trial would fit in the search's share (once not, never again)."""
    c = clock()
    if c is None:
        return True
    if not c.no_more and c.phase_left() <= c.trial_need():
        c.no_more = True
    return not c.no_more


def phase_over() -> bool:
    """Whether the running phase's share is spent (then it is marked ended)."""
    c = clock()
    if c is None:
        return False
    if c.phase not in c.ended and c.phase_left() <= 0:
        c.ended.append(c.phase)
    return c.phase in c.ended


def saw_epoch(seconds: Any) -> None:
    if _CLOCK and isinstance(seconds, int | float) and seconds > 0:
        _CLOCK[0].epoch_s.append(float(seconds))


def confirming() -> None:
    """The search is over: the confirmation's phase begins."""
    if _CLOCK:
        _CLOCK[0].phase = "confirm"


def record(planned: int, ran: int, cut: int = 0) -> dict[str, Any] | None:
    """The budget's part of the summary (None without one); `cut`: the trials recorded
    stopped by it (the clock may end a phase in the step its last trial ended)."""
    c = clock()
    if c is None:
        return None
    return {
        "time_budget_s": c.total,
        "reserve_s": reserve(c.total),
        "spent_s": round(c.spent(), 1),
        "ended_search": c.no_more or cut > 0 or ran < planned,
        "cut_running_trials": cut > 0,
        "cut_confirmation": "confirm" in c.ended,
        "planned_trials": planned,
        "trials": ran,
    }


def summary_line(made: dict[str, Any]) -> str:
    """`time budget 5m: it ended the search after 7 of 20 trials ...` for the console."""
    total = describe(made["time_budget_s"])
    if not made["ended_search"]:
        return f"time budget {total}: the search ended by itself ({describe(made['spent_s'])} used)"
    cut = ", the running ones stopped at their last epoch" if made["cut_running_trials"] else ""
    return (
        f"time budget {total}: it ended the search after {made['trials']} of "
        f"{made['planned_trials']} planned trials{cut}; --resume finishes nothing new: the "
        "same command again adds trials to the study"
    )
