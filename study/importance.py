"""What mattered: which sampled hyperparameters drove a study's objective, and its cost.

Two rankings over every trial of the study so far (all invocations), computed at the end
of each invocation by Optuna's fANOVA evaluator, seeded (the same trials give the same
ranking). fANOVA rather than PED-ANOVA: it explains the variance of every trial's value,
where PED-ANOVA compares the top 10 % with the rest, which is one or two trials in the
6-30 trial studies this project runs.

- objective: the search's metric (`val_iou` ...) as each trial last reported it. A trial
  ASHA stopped counts with its last value whether Optuna holds it as COMPLETE (its value)
  or PRUNED (its last intermediate value): both are copied as COMPLETE trials into an
  in-memory study, which is what the evaluator reads.
- cost: the epochs each trial reached (its MLflow `epochs` tag, else its last reported
  step). Epochs, not seconds: they are what ASHA hands out and the summary counts, and
  they do not move with the load of a shared machine or how many trials ran at once.

Only parameters that every counted trial sampled from one distribution, and that took
more than one value, are ranked; the others are listed with why (conditional, a range
changed between invocations, one value). Fewer than MIN_TRIALS trials with a value, or a
grid search (named runs, nothing sampled), give no ranking and one line saying why.

Names (study.schema): on the invocation's parent run the metrics `importance.<param>`
and `cost_importance.<param>`, <param> the Optuna parameter as sampled (`alpha`, `lr`, a
model's knob `unet.depth`), each ranking summing to 1; the artifact `importance.json`
(what `what_mattered` returns); the summary's key "importance" holds the same. A failure here never
fails a study: one warning line, and the summary says it was not computed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from study import tracking
from study.schema import IMPORTANCE_PREFIXES, Artifact, Tag

MIN_TRIALS = 5  # trials with a value below which a forest over them says nothing
SEED = 0  # fANOVA's random forest: the same trials, the same ranking
TREES = 64  # Optuna's default
EVALUATOR = f"fANOVA ({TREES} trees, seed {SEED})"
OBJECTIVE, COST = "objective", "cost"  # the two rankings, in that order
COST_TARGET = "epochs"


def record(c: Any, parent_id: str, study: Any, search: Any, trial_runs: list) -> dict[str, Any]:
    """Compute what mattered, log it on the parent run and return it for the summary.

    Never raises: a failure is one warning line and a result that says it was not computed.
    """
    try:
        found = what_mattered(study, search, epochs_of(trial_runs))
    except Exception as err:
        print(f"warning: what mattered was not computed ({_brief(err)})")
        return {"why": f"not computed: {type(err).__name__}"}
    try:
        if metrics(found):
            tracking.log_metrics(c, parent_id, metrics(found))
        tracking.log_json(c, parent_id, found, Artifact.IMPORTANCE)
    except Exception as err:
        print(f"warning: what mattered was not logged to MLflow ({_brief(err)})")
    return found


def _brief(err: Exception) -> str:
    """An error as the one line a warning quotes: its type and its message's first line."""
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def epochs_of(trial_runs: Iterable[Any]) -> dict[int, int]:
    """The epochs each Optuna trial reached, by number, from its MLflow run's tags."""
    out = {}
    for run in trial_runs:
        tags = run.data.tags
        number = tags.get(Tag.OPTUNA_TRIAL)
        epochs = tags.get(Tag.EPOCHS, tags.get(Tag.EPOCHS_LOGGED))
        if number is not None and epochs:
            out[int(number)] = int(epochs)
    return out


def what_mattered(
    study: Any, search: Any, epochs: Mapping[int, int] | None = None
) -> dict[str, Any]:
    """Both rankings of `study` (an Optuna study) for `search` (its metric, mode, grid).

    `epochs`: the epochs each trial reached, by trial number (MLflow's); a trial not in
    it counts its last reported step. The result, JSON-ready:
    `{"evaluator", "trials", "objective": {"target", "ranking" | "why"}, "cost": {...},
    "unranked": {param: why}}`, each ranking {param: share} largest first, summing to 1.
    """
    valued = [(t, v) for t in _finished(study) if (v := value_of(t)) is not None]
    counted = [(t, e) for t, _ in valued if (e := _epochs(t, epochs or {})) is not None]
    out: dict[str, Any] = {"evaluator": EVALUATOR, "trials": len(valued)}
    why = None
    if search.grid:
        why = "a grid search: its runs are a fixed list, nothing was sampled"
    elif len(valued) < MIN_TRIALS:
        why = f"{len(valued)} trials with a value; needs {MIN_TRIALS}"
    unranked: dict[str, str] = {}
    for part, target, pairs in (
        (OBJECTIVE, search.metric, valued),
        (COST, COST_TARGET, counted),
    ):
        out[part] = {"target": target}
        if why is None:
            out[part] |= _rank(pairs, search.mode, target, unranked)
        else:
            out[part]["why"] = why
    out["unranked"] = unranked
    return out


def value_of(trial: Any) -> float | None:
    """The objective a trial ended with: its value when COMPLETE; when PRUNED, the value
    Optuna's tell gave it, else its last intermediate value (the highest step); None
    for any other state, or a value that is not finite."""
    from optuna.trial import TrialState

    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        return None
    value = trial.value
    if value is None and trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    return float(value) if value is not None and math.isfinite(value) else None


def _finished(study: Any) -> list:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)


def _epochs(trial: Any, epochs: Mapping[int, int]) -> int | None:
    if trial.number in epochs:
        return epochs[trial.number]
    return max(trial.intermediate_values) if trial.intermediate_values else None


def _rank(pairs: list, mode: str, target: str, unranked: dict[str, str]) -> dict[str, Any]:
    """{"ranking": {...}} of the trials' params for their targets, or {"why": ...}; the
    params left out go into `unranked` with why."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    if len(pairs) < MIN_TRIALS:
        return {"why": f"{len(pairs)} trials with {target}; needs {MIN_TRIALS}"}
    if len({v for _, v in pairs}) == 1:
        same = pairs[0][1]
        said = (
            f"reached {same:g} epochs" if target == COST_TARGET else f"ended with {target} {same:g}"
        )
        return {"why": f"every trial {said}: nothing to explain"}
    params = rankable([t for t, _ in pairs], unranked)
    if not params:
        return {"why": "no parameter was sampled in every trial with more than one value"}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:  # (fANOVA reads no direction: the mode only names the copy's)
        copy = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(
        [
            optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=v)
            for t, v in pairs
        ]
    )
    evaluator = FanovaImportanceEvaluator(n_trees=TREES, seed=SEED)
    with warnings.catch_warnings():  # Optuna's experimental and small-sample notices
        warnings.simplefilter("ignore")
        shares = get_param_importances(copy, evaluator=evaluator, params=params)
    ranking = {k: round(float(v), 4) for k, v in shares.items()}
    return {"ranking": dict(sorted(ranking.items(), key=lambda kv: (-kv[1], kv[0])))}


def rankable(trials: list, unranked: dict[str, str]) -> list[str]:
    """The params every trial sampled from one distribution, that took more than one value;
    each other param goes into `unranked` with why."""
    names = sorted({k for t in trials for k in t.params})
    out = []
    for name in names:
        dists = [t.distributions.get(name) for t in trials]
        if any(d is None for d in dists):
            unranked[name] = "sampled in only some trials (conditional)"
        elif any(d != dists[0] for d in dists):
            unranked[name] = "its range changed between invocations"
        elif dists[0].single() or len({repr(t.params[name]) for t in trials}) == 1:
            unranked[name] = "took one value in every trial"
        else:
            out.append(name)
    return out


def metrics(found: Mapping[str, Any]) -> dict[str, float]:
    """The parent run's metrics: `importance.<param>` and `cost_importance.<param>`."""
    out = {}
    for part, prefix in IMPORTANCE_PREFIXES.items():
        for name, share in found.get(part, {}).get("ranking", {}).items():
            out[prefix + name] = share
    return out


def line(found: Mapping[str, Any]) -> str:
    """The console's line: `what mattered: alpha 0.71, lr 0.29; cost (epochs): lr 0.80 ...`,
    or `what mattered: none (3 trials with a value; needs 5)`."""
    obj, cost = found.get(OBJECTIVE, {}), found.get(COST, {})
    whys = [got.get("why", found.get("why", "not computed")) for got in (obj, cost)]
    if "ranking" not in obj and whys[0] == whys[1]:  # one reason for both: said once
        return f"what mattered: none ({whys[0]})"
    shown = [
        ", ".join(f"{k} {v:.2f}" for k, v in got.get("ranking", {}).items()) or f"none ({why})"
        for got, why in zip((obj, cost), whys, strict=True)
    ]
    return f"what mattered: {shown[0]}; cost ({cost.get('target', COST_TARGET)}): {shown[1]}"
