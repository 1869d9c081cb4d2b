"""The checks of a search file's parts, each failing with the key it names (see study.search).

An error quotes a user's value only as an `excerpt` (at most EXCERPT_CHARS characters),
and a nested error's message only `brief`ly, so a hostile file still fails in one short line.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from flairseg.config import field_types
from flairseg.errors import ConfigError
from flairseg.models import MODELS, model_keys, model_params
from study.space import Asha, Dim, Search, brief, build_config, excerpt, fail

TOP_KEYS = {
    "description",
    "objective",
    "fixed",
    "space",
    "points",
    "grid",
    "epoch_scale",
    "trials",
    "asha",
    "concurrency",
    "time_budget",
    "cost",
    "resources",
    "sampler",
    "cv",
    "decisions",
    "confirm",
    "laptop",
}
LAPTOP_KEYS = TOP_KEYS - {"description", "objective", "grid", "laptop"}
KINDS = ("uniform", "loguniform", "int", "choice")
OBJECTIVES = (
    "val_iou",
    "val_dice",
    "val_volume_dice",
    "val_pixel_accuracy",
    "val_mean_accuracy",
    "val_loss",
)
# settings a study owns: epochs come from the ASHA budget, grid or space
STUDY_OWNED = ("epochs",)
# settings every trial of a study shares: they fix the data set and its split
SHARED = ("image_size", "channels", "val_fraction", "test_fraction", "split_seed")

# What a study can mean. Every trial trains a model for at least one epoch: ten thousand
# trials, or ten thousand epochs of one trial, is weeks of compute (the seed's longest run
# is 350 epochs, the shipped searches ask for at most 30 trials); more is a typo.
MAX_TRIALS = 10_000  # trials: the file's, --trials
MAX_EPOCHS = 10_000  # every epoch count: asha.max_epochs, --max-epochs, the grace period,
# an `epochs` dimension, a point's or grid entry's epochs
MAX_EPOCH_SCALE = 1_000.0  # epoch_scale, --epoch-scale (the result is capped by max_epochs)


def refuse(label: str, value: Any, need: str) -> ConfigError:
    """`LABEL: VALUE NEED` for a key (after its file), `--flag VALUE: NEED` for a flag."""
    if label.startswith("--"):
        return ConfigError(f"{label} {excerpt(value)}: {need}")
    return ConfigError(f"{label}: {excerpt(value)} {need}")


def check_count(value: Any, label: str, high: int, low: int = 1) -> int:
    """`value` if it is a whole number in [low, high]; else a ConfigError naming `label`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise refuse(label, value, f"must be a whole number, at least {low}")
    if value > high:
        raise refuse(label, value, f"must be at most {high}")
    return value


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not an int too large for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_keys(
    mapping: Mapping[str, Any], allowed: set[str], where: str, what: str, prefix: str = ""
) -> None:
    for key in mapping:
        if key not in allowed:
            raise fail(
                where,
                f"unknown {what} {prefix}{excerpt(key)}; known: {', '.join(sorted(allowed))}",
            )


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_profile(raw: Mapping[str, Any], where: str, profile: str) -> dict[str, Any]:
    """Check the top keys and the laptop block; for the laptop profile, merge it in."""
    check_keys(raw, TOP_KEYS, where, "key")
    data = copy.deepcopy(dict(raw))
    laptop = data.pop("laptop", None) or {}
    if not isinstance(laptop, dict):
        raise fail(where, "laptop: must be a mapping of overrides")
    check_keys(laptop, LAPTOP_KEYS, where, "laptop key", prefix="laptop.")
    return merge(data, laptop) if profile == "laptop" else data


def parse_objective(objective: Any, where: str) -> tuple[str, str]:
    if not isinstance(objective, dict):
        raise fail(where, "objective: must be a mapping {metric: ..., mode: ...}")
    check_keys(objective, {"metric", "mode"}, where, "objective key", prefix="objective.")
    metric = objective.get("metric", "val_iou")
    if metric not in OBJECTIVES:
        raise fail(
            where, f"objective.metric: {excerpt(metric)} is not one of {', '.join(OBJECTIVES)}"
        )
    mode = objective.get("mode", "min" if metric == "val_loss" else "max")
    if mode not in ("max", "min"):
        raise fail(where, f"objective.mode: {excerpt(mode)} must be max or min")
    return metric, mode


def parse_runs(
    data: Mapping[str, Any], where: str
) -> tuple[list[dict[str, Any]], list[Dim], list[dict[str, Any]]]:
    """The grid, or the space (and its seed points): one of the two, not both."""
    grid = parse_grid(data.get("grid") or [], where)
    dims = parse_space(data.get("space") or {}, where)
    if grid and dims:
        raise fail(where, "grid and space: give one or the other")
    if not grid and not dims:
        raise fail(where, "space: empty; give at least one dimension (or a grid)")
    return grid, dims, parse_points(data.get("points") or [], where)


def parse_resources(
    resources: Any, overrides: Mapping[str, Any], where: str
) -> tuple[float, float | str]:
    if not isinstance(resources, dict):
        raise fail(where, "resources: must be a mapping {cpus: ..., gpus: ...}")
    check_keys(resources, {"cpus", "gpus"}, where, "resources key", prefix="resources.")
    cpus = overrides.get("cpus", resources.get("cpus", 1))
    gpus = overrides.get("gpus", resources.get("gpus", "auto"))
    if not is_number(cpus) or cpus <= 0:
        raise fail(where, f"resources.cpus: {excerpt(cpus)} must be a number above 0")
    if gpus != "auto" and (not is_number(gpus) or gpus < 0):
        raise fail(where, f"resources.gpus: {excerpt(gpus)} must be auto or a number, at least 0")
    return cpus, gpus


def parse_sampler(sampler: Any, where: str) -> int:
    """The number of random trials before TPE takes over."""
    if not isinstance(sampler, dict):
        raise fail(where, "sampler: must be a mapping {startup_trials: N}")
    check_keys(sampler, {"startup_trials"}, where, "sampler key", prefix="sampler.")
    startup = sampler.get("startup_trials", 5)
    return check_count(startup, f"{where}: sampler.startup_trials", MAX_TRIALS, low=0)


def config_keys() -> set[str]:
    return set(field_types())


def check_setting(key: str, where: str, model: str | None = None, shared: bool = False) -> None:
    if key in STUDY_OWNED:
        raise fail(
            where,
            f"{excerpt(key)}: the epoch budget is asha.max_epochs (or an `epochs` dimension "
            "in space, or a grid entry)",
        )
    if key in SHARED and not shared:
        raise fail(
            where,
            f"{excerpt(key)} fixes the data set and split that every trial shares: "
            "set it in `fixed`",
        )
    if key not in config_keys():
        raise fail(
            where, f"unknown setting {excerpt(key)}; known: {', '.join(sorted(config_keys()))}"
        )
    if model is not None and key in model_keys() and key not in model_params(model):
        raise fail(
            where,
            f"{excerpt(key)} does not apply to model {model!r} (its knobs: "
            f"{', '.join(model_params(model))})",
        )


def parse_fixed(fixed: Any, where: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if not isinstance(fixed, dict):
        raise fail(where, "fixed: must be a mapping of settings")
    top: dict[str, Any] = {}
    per_model: dict[str, dict[str, Any]] = {}
    for key, value in fixed.items():
        if key in MODELS:
            if not isinstance(value, dict):
                raise fail(where, f"fixed.{key}: a model block must be a mapping of settings")
            for sub in value:
                check_setting(sub, f"{where}: fixed.{key}", model=key)
            per_model[key] = dict(value)
        else:
            check_setting(key, f"{where}: fixed", shared=True)
            top[key] = value
    try:
        build_config(top)
    except ConfigError as err:
        # model knobs of the fixed model may legitimately sit at top level; anything else
        # that fails here is a bad value
        raise fail(where, f"fixed: {brief(err)}") from None
    return top, per_model


def parse_cv(cv: Any, where: str, folds_flag: int | None) -> int | None:
    """`cv: {folds: K}` (or --folds K): K-fold cross-validated trials; None: one val split."""
    if folds_flag is not None:
        return folds_flag
    if cv is None or cv is False:
        return None
    if not isinstance(cv, dict):
        raise fail(where, "cv: must be a mapping {folds: K}")
    check_keys(cv, {"folds"}, where, "cv key", prefix="cv.")
    return check_count(cv.get("folds"), f"{where}: cv.folds", MAX_TRIALS, low=2)


def parse_asha(asha: Any, where: str, max_epochs_flag: int | None) -> Asha:
    if asha is False:
        asha = {"enabled": False}
    if asha is None:
        asha = {}
    if not isinstance(asha, dict):
        raise fail(
            where, "asha: must be a mapping {max_epochs, grace_period, reduction_factor} or false"
        )
    check_keys(
        asha,
        {"max_epochs", "grace_period", "reduction_factor", "enabled"},
        where,
        "asha key",
        prefix="asha.",
    )
    if max_epochs_flag is not None:
        max_epochs = check_count(max_epochs_flag, "--max-epochs", MAX_EPOCHS)
    else:
        max_epochs = check_count(
            asha.get("max_epochs", 20), f"{where}: asha.max_epochs", MAX_EPOCHS
        )
    grace = check_count(asha.get("grace_period", 1), f"{where}: asha.grace_period", MAX_EPOCHS)
    factor = asha.get("reduction_factor", 3)
    if not is_number(factor) or factor <= 1:
        raise fail(where, f"asha.reduction_factor: {excerpt(factor)} must be a number above 1")
    grace = min(grace, max_epochs)  # --max-epochs below the grace period: one rung
    return Asha(max_epochs, grace, float(factor), bool(asha.get("enabled", True)))


def parse_dim(key: str, spec: Any, where: str, model: str | None) -> Dim:
    here = f"{where}: space.{model + '.' if model else ''}{key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{here}: must be a mapping like {{uniform: [low, high]}}")
    kinds = [k for k in spec if k in KINDS]
    others = [k for k in spec if k not in KINDS and k != "when"]
    if others:
        raise ConfigError(
            f"{here}: unknown key {excerpt(others[0])}; use one of {', '.join(KINDS)} (and `when`)"
        )
    if len(kinds) != 1:
        raise ConfigError(f"{here}: give exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{here}: {kind} needs a list of values")
    if kind == "choice":
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{here}: choice lists a value twice")
    else:
        if len(values) != 2 or not all(is_number(v) for v in values):
            raise ConfigError(f"{here}: {kind} needs [low, high] as two numbers")
        low, high = values
        if kind == "int" and not all(isinstance(v, int) for v in values):
            raise ConfigError(
                f"{here}: int needs whole numbers, got [{excerpt(low)}, {excerpt(high)}]"
            )
        shown = f"bad range [{excerpt(low)}, {excerpt(high)}]"
        if low >= high:
            raise ConfigError(f"{here}: {shown}: low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{here}: {shown}: loguniform needs low above 0")
        values = [float(low), float(high)] if kind != "int" else [low, high]
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{here}.when: must be a mapping of settings, like {{loss: combo}}")
    for wkey in when:
        check_setting(wkey, f"{here}.when")
    return Dim(key, kind, tuple(values), model, tuple(when.items()))


def parse_space(space: Any, where: str) -> list[Dim]:
    if not isinstance(space, dict):
        raise fail(where, "space: must be a mapping of dimensions")
    dims: list[Dim] = []
    for key, spec in space.items():
        if key in MODELS:
            if not isinstance(spec, dict):
                raise fail(where, f"space.{key}: a model block must be a mapping of dimensions")
            for sub, sub_spec in spec.items():
                check_setting(sub, f"{where}: space.{key}", model=key)
                dims.append(parse_dim(sub, sub_spec, where, key))
        elif key == "epochs":
            dims.append(parse_dim(key, spec, where, None))
        else:
            check_setting(key, f"{where}: space")
            dims.append(parse_dim(key, spec, where, None))
    # a top-level dimension sampled before the branches that depend on it
    dims.sort(key=lambda d: (d.model is not None, bool(d.when)))
    return dims


def parse_points(points: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise fail(where, "points: must be a list of mappings of settings")
    return [dict(p) for p in points]


def parse_grid(grid: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
        raise fail(where, "grid: must be a list of mappings, each with a name")
    names = []
    for i, entry in enumerate(grid):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise fail(where, f"grid[{i}]: needs a name")
        if name in names:
            raise fail(where, f"grid[{i}]: name {excerpt(name)} is used twice")
        names.append(name)
        here = f"{where}: grid[{i}] ({excerpt(name)})"
        if "epochs" in entry:
            check_count(entry["epochs"], f"{here}: epochs", MAX_EPOCHS)
        for key in entry:
            if key not in ("name", "epochs"):
                check_setting(key, here)
    return [dict(g) for g in grid]


def check_buildable(search: Search, where: str) -> None:
    """Build a TrainConfig at every end of every dimension, each point and grid entry."""
    for i, entry in enumerate(search.grid):
        try:
            search.config_for(entry)
        except ConfigError as err:
            raise fail(where, f"grid[{i}] ({excerpt(entry['name'])}): {brief(err)}") from None
    for dim in search.dims:
        base: dict[str, Any] = {}
        if dim.model is not None:
            base["model"] = dim.model
        base.update(dict(dim.when))
        for value in dim.extremes():
            if dim.key == "epochs":
                check_count(value, f"{where}: space.epochs", MAX_EPOCHS)
                continue
            try:
                search.config_for({**base, dim.key: value})
            except ConfigError as err:
                label = f"space.{dim.model + '.' if dim.model else ''}{dim.key}"
                raise fail(where, f"{label}: {brief(err)}") from None
    for i, point in enumerate(search.points):
        if "epochs" in point:
            check_count(point["epochs"], f"{where}: points[{i}]: epochs", MAX_EPOCHS)
        model = search._model(point)
        for key in point:
            if search._dim_for(key, model) is None:
                raise fail(where, f"points[{i}]: {excerpt(key)} is not a dimension of the space")
        try:
            search.config_for(point)
        except ConfigError as err:
            raise fail(where, f"points[{i}]: {brief(err)}") from None
