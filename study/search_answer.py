"""A search file's keys for how a study reaches its answer: `decisions` and `confirm`.

`decisions: fixed` (the default) makes Optuna's proposals and ASHA's stops follow the
trials' order (study.ordered, study.referee); `arrival` takes them as results arrive.
`confirm: {finalists: K, seeds: R}` (or `false`) sets the confirmation stage (study.confirm).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from study.search_checks import MAX_TRIALS, check_count, check_keys, refuse
from study.space import fail

DECISIONS = ("fixed", "arrival")  # in the trials' order (the default), or as results arrive


def parse_decisions(data: Mapping[str, Any], overrides: Mapping[str, Any], where: str) -> str:
    """`decisions: fixed` (proposals and ASHA's stops in the trials' order: the same answer
    every run) or `arrival` (as results arrive: no waiting, not reproducible)."""
    value = overrides.get("decisions", data.get("decisions", DECISIONS[0]))
    if value not in DECISIONS:
        label = "--decisions" if "decisions" in overrides else f"{where}: decisions"
        raise refuse(label, value, f"must be one of: {', '.join(DECISIONS)}")
    return value


CONFIRM_DEFAULT = {"finalists": 3, "seeds": 3}


def parse_confirm(confirm: Any, where: str, flag: int | None) -> tuple[int, int]:
    """`confirm: {finalists: K, seeds: R}` (defaults 3 and 3; `confirm: false` turns it
    off), --confirm K, --no-confirm (a flag K of 0): the finalists the confirmation stage
    retrains, and the seeds each gets where the study is not cross-validated."""
    if confirm is None or confirm is True:
        confirm = {}
    if confirm is False:
        confirm = {"finalists": 0}
    if not isinstance(confirm, dict):
        raise fail(where, "confirm: must be a mapping {finalists: K, seeds: R} or false")
    check_keys(confirm, {"finalists", "seeds"}, where, "confirm key", prefix="confirm.")
    merged = {**CONFIRM_DEFAULT, **confirm}
    if flag is not None:
        merged["finalists"] = flag
        label = "--confirm"
    else:
        label = f"{where}: confirm.finalists"
    finalists = check_count(merged["finalists"], label, MAX_TRIALS, low=0)
    seeds = check_count(merged["seeds"], f"{where}: confirm.seeds", MAX_TRIALS, low=1)
    return finalists, seeds
