"""The confirmation stage: the study's finalists retrained to the full budget and compared.

A search ranks trials on what ASHA let them show: a trial stopped at epoch 3 is compared
with one trained to epoch 20, and one split of patients (or one seed) decides. Here the
top K configurations (`choose`) are each trained again without early stopping, as Ray
Tune trials like the search's: cross-validated studies train every fold, others R seeds.
Each finalist is then scored per patient on the same patients (each non-test patient by
its own fold's model; or the mean over seeds), and the winner (the best confirmed
objective) is compared with every other finalist, paired (study.compare).

Finalists are chosen on what the search knows, not only on last values: each trial's
standing at the highest rung it reached among the trials that reached that rung (its
rank there, 1 at the top), so a trial ASHA cut while it was level with the survivors
can be retrained. Ties go to the trial that went further, then to the better value.

A finalist whose search trial already ran its full budget is not trained again with its
own seed (or folds): that trial is what the retraining would repeat, so its last
checkpoint stands for that replica (`kept_checkpoints`; only where the worker can read it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from flairseg.evolution import STATE_FILE
from study import compare
from study import search as searches
from study.referee import milestones
from study.schema import Status, Tag


@dataclasses.dataclass(frozen=True)
class Finalist:
    """A search trial chosen for confirmation, and what the search knew of it."""

    trial: int
    config: dict[str, Any]  # its TrainConfig at the full budget
    label: str
    rung: int  # the highest rung it reached (its last epoch if it completed)
    value: float  # its objective there
    standing: float  # 1 - (rank - 1) / peers at that rung: 1.0 is the top
    search_value: float  # its last objective in the search
    search_epochs: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose(study: Any, search: searches.Search, k: int) -> list[Finalist]:
    """The top `k` trials of the study by their standing at the highest rung they reached."""
    import optuna

    sign = 1.0 if search.mode == "max" else -1.0
    state = optuna.trial.TrialState
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED))
        if t.intermediate_values and _finite(t.value)
    ]
    asha = search.asha
    rungs = milestones(asha.max_epochs, asha.grace_period, asha.reduction_factor)
    rungs = rungs if asha.enabled else []
    chosen = []
    for t in trials:
        config = search(optuna.trial.FixedTrial(t.params, t.number))["flairseg"]
        reached = max(t.intermediate_values)
        levels = [r for r in rungs if r <= reached] + (
            [config["epochs"]] if reached >= config["epochs"] else []
        )
        rung = max(levels) if levels else reached
        value = t.intermediate_values.get(rung, t.value)
        peers = [p.intermediate_values[rung] for p in trials if rung in p.intermediate_values]
        better = sum(sign * v > sign * value for v in peers if _finite(v))
        standing = 1.0 - better / max(len(peers), 1)
        label = _label(t.number, t.params)
        chosen.append(Finalist(t.number, config, label, rung, value, standing, t.value, reached))
    chosen.sort(key=lambda f: (-f.standing, -f.rung, -sign * f.value, f.trial))
    return chosen[:k]


def _label(number: int, params: dict[str, Any]) -> str:
    shown = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]
    return " ".join([f"#{number}", *shown])


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def cases(
    finalists: list[Finalist], search: searches.Search, kept: dict[int, str] | None = None
) -> list[dict[str, Any]]:
    """The confirmation's Tune trials: each finalist once with folds, else once per seed.
    `kept`: the last checkpoints of finalists whose search trial ran its full budget; their
    first replica (the trial's own seed and folds) keeps it instead of training again."""
    replicas = 1 if search.folds else search.confirm_seeds
    out = []
    for f in finalists:
        for r in range(replicas):
            config = dict(f.config)
            config["seed"] = int(config.get("seed", 0)) + r
            case = {"flairseg": config, "optuna_trial": f.trial, "replica": r}
            if r == 0 and f.trial in (kept or {}):
                case["kept"] = kept[f.trial]
            out.append(case)
    return out


def kept_checkpoints(finalists: list[Finalist], trial_runs: list) -> dict[int, str]:
    """The finalists whose search trial completed its full budget (no early stop): trial
    number -> its last checkpoint, where this machine can read it. Retraining such a trial
    with its own config, seed and folds would repeat it."""
    by_number = {r.data.tags.get(Tag.OPTUNA_TRIAL): r for r in trial_runs}
    kept = {}
    for f in finalists:
        run = by_number.get(str(f.trial))
        if run is None or f.search_epochs < int(f.config["epochs"]):
            continue
        tags = run.data.tags
        where = tags.get(Tag.CHECKPOINT, "")
        full = tags.get(Tag.STATUS) == Status.COMPLETED and tags.get(Tag.EPOCHS) == str(
            f.config["epochs"]
        )
        if full and where and (Path(where) / STATE_FILE).exists():
            kept[f.trial] = where
    return kept


def record(
    finalists: list[Finalist], results: list[dict[str, Any]], search: searches.Search
) -> dict[str, Any]:
    """The comparison record from the confirmation trials' results: each a case's
    `optuna_trial`, `replica`, `metrics`, `patients` and `checkpoint` (None: it failed).
    A finalist with a failed replica is left out, and said in `left_out`."""
    import numpy as np

    rows, left_out = [], []
    for f in finalists:
        mine = sorted(
            (r for r in results if r["optuna_trial"] == f.trial), key=lambda r: r["replica"]
        )
        if not mine or any(r.get("checkpoint") is None or not r.get("patients") for r in mine):
            left_out.append(f.trial)
            continue
        values = np.array([r["metrics"].get(search.metric, math.nan) for r in mine], float)
        patients = {
            name: {
                key: float(np.mean([r["patients"][name][key] for r in mine]))
                for key in compare.METRICS
            }
            for name in sorted(mine[0]["patients"])
        }
        rows.append(
            {
                **f.to_dict(),
                "objective": float(values.mean()),
                "objective_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "epochs": int(mine[0]["metrics"].get("epoch", 0)),
                "checkpoint": mine[0]["checkpoint"],
                "patients": patients,
            }
        )
    if not rows:
        return {"left_out": left_out, "winner": None, "finalists": [], "comparisons": []}
    made = compare.compare(rows, search.metric, search.mode)
    made["method"] = "folds" if search.folds else "seeds"
    made["replicas"] = search.folds or search.confirm_seeds
    made["left_out"] = left_out
    return made


def answer_line(made: dict[str, Any]) -> str:
    """The winner against the runner-up in words (the parent's tag, the version's tag)."""
    winner = made.get("winner")
    if winner is None:
        return "no finalist was confirmed"
    runner = next((c for c in made["comparisons"] if c["metric"] == compare.METRICS[0]), None)
    if runner is None:
        return f"trial #{winner} confirmed, the only finalist"
    return (
        f"trial #{winner} confirmed; against #{runner['trial']}: volume Dice "
        f"{runner['mean_difference']:+.4f} [{runner['ci_low']:+.4f}, {runner['ci_high']:+.4f}], "
        f"Wilcoxon p {runner['p_value']:.3g}: {runner['verdict']}"
    )


def read_patients(checkpoint: str | None) -> dict[str, Any] | None:
    """The per-patient scores a confirmation trial left in its last checkpoint."""
    from study.trainable import PATIENTS_FILE

    if checkpoint is None:
        return None
    path = Path(checkpoint) / PATIENTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
