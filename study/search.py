"""Search files (experiments/*.yaml): loading, validation, and the space Optuna samples.

A search file holds data, not code:

    description: one line
    objective: {metric: val_iou, mode: max}      # the default
    fixed: {model: unet, loss: combo, unet: {width: 16}}   # a model-named block applies
                                                             # only to that model
    space:                                        # sampled by Optuna (TPE)
      alpha: {uniform: [0.0, 1.0]}
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      width: {choice: [8, 16, 32]}
      depth: {int: [1, 3]}
      alpha: {uniform: [0, 1], when: {loss: combo}}   # sampled only when loss is combo
      setr: {num_cuts: {choice: [4, 8]}}            # sampled only when model is setr
    points: [{alpha: 0.7, lr: 0.001}]             # evaluated first, once per study
    grid: [{name: a, model: unet, epochs: 20}]    # instead of space: a fixed list of runs
    epoch_scale: 1.0                              # multiplies every epoch count (grid, budget)
    trials: 20
    asha: {max_epochs: 40, grace_period: 5, reduction_factor: 3}   # or `asha: false`
    concurrency: 2
    resources: {cpus: 1, gpus: auto}              # per trial; auto: 1 if CUDA is visible
    sampler: {startup_trials: 5}                  # random trials before TPE takes over
    laptop: {...}                                 # overrides for the laptop profile

Every key is checked on load: an unknown key, a bad range, a misspelt model or a
value no model can be built with fails naming the key, before Ray starts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flairseg.config import MODEL_KEYS, TrainConfig, field_types
from flairseg.errors import ConfigError
from flairseg.models import MODELS, model_params

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
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
    "resources",
    "sampler",
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


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


@dataclass(frozen=True)
class Dim:
    """One sampled dimension: `key` is the TrainConfig setting, `name` the Optuna parameter."""

    key: str
    kind: str
    values: tuple
    model: str | None = None  # sampled only when the trial's model is this one
    when: tuple[tuple[str, Any], ...] = ()  # sampled only when these settings hold

    @property
    def name(self) -> str:
        return f"{self.model}.{self.key}" if self.model else self.key

    def describe(self) -> str:
        if self.kind == "choice":
            text = f"choice {list(self.values)}"
        else:
            text = f"{self.kind} [{self.values[0]:g}, {self.values[1]:g}]"
        cond = [f"model={self.model}"] if self.model else []
        cond += [f"{k}={v}" for k, v in self.when]
        return f"{self.key}: {text}" + (f"  (when {', '.join(cond)})" if cond else "")

    def suggest(self, trial: Any) -> Any:
        if self.kind == "uniform":
            return trial.suggest_float(self.name, *self.values)
        if self.kind == "loguniform":
            return trial.suggest_float(self.name, *self.values, log=True)
        if self.kind == "int":
            return trial.suggest_int(self.name, *self.values)
        return trial.suggest_categorical(self.name, list(self.values))

    def extremes(self) -> list[Any]:
        return list(self.values)


@dataclass(frozen=True)
class Asha:
    max_epochs: int
    grace_period: int
    reduction_factor: float
    enabled: bool = True


@dataclass
class Search:
    """A validated search: what a study samples, trains and how long."""

    name: str
    source: str
    description: str
    metric: str
    mode: str
    fixed: dict[str, Any]
    fixed_per_model: dict[str, dict[str, Any]]
    dims: list[Dim]
    points: list[dict[str, Any]]
    grid: list[dict[str, Any]]
    epoch_scale: float
    trials: int
    asha: Asha
    concurrency: int
    cpus: float
    gpus: float | str  # a number or "auto"
    startup_trials: int
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    # -- the space Optuna samples (define-by-run, so branches stay conditional) --

    def __call__(self, trial: Any) -> dict[str, Any]:
        """Sample one trial; returns the constants Ray adds to the trial config."""
        values: dict[str, Any] = {}
        if self.grid:
            names = [g["name"] for g in self.grid]
            pick = trial.suggest_categorical("run", names)
            values.update({k: v for k, v in self.grid[names.index(pick)].items() if k != "name"})
        for dim in self.dims:
            if dim.model is not None and self._model(values) != dim.model:
                continue
            if any(self._value(values, k) != v for k, v in dim.when):
                continue
            values[dim.key] = dim.suggest(trial)
        return {"flairseg": self.config_for(values).to_dict(), "optuna_trial": trial.number}

    def _model(self, values: Mapping[str, Any]) -> str:
        return values.get("model", self.fixed.get("model", TrainConfig.model))

    def _value(self, values: Mapping[str, Any], key: str) -> Any:
        if key in values:
            return values[key]
        return self.fixed.get(key, getattr(TrainConfig(), key))

    def config_for(self, values: Mapping[str, Any]) -> TrainConfig:
        """The full TrainConfig of a trial from its sampled (or grid) values."""
        values = {k: v for k, v in values.items() if k != "name"}  # a grid entry's label
        merged = dict(self.fixed)
        model = self._model(values)
        merged.update(self.fixed_per_model.get(model, {}))
        merged.update(values)
        epochs = merged.get("epochs", self.asha.max_epochs)
        if "epochs" in values or self.grid:
            epochs = max(1, round(epochs * self.epoch_scale))
        merged["epochs"] = min(int(epochs), self.asha.max_epochs)
        return TrainConfig.from_dict(merged)

    def planned_epochs(self) -> int:
        return self.asha.max_epochs

    def optuna_points(self) -> list[dict[str, Any]]:
        """Seed points (or grid runs) as Optuna parameters, to enqueue once per study."""
        if self.grid:
            return [{"run": g["name"]} for g in self.grid]
        out = []
        for point in self.points:
            params = {}
            model = self._model(point)
            for key, value in point.items():
                dim = self._dim_for(key, model)
                if dim is not None:
                    params[dim.name] = value
            out.append(params)
        return out

    def _dim_for(self, key: str, model: str) -> Dim | None:
        for dim in self.dims:
            if dim.key == key and dim.model in (None, model):
                return dim
        return None

    def describe_space(self) -> list[str]:
        if self.grid:
            return [
                "grid: "
                + ", ".join(f"{g['name']} ({self.config_for(g).epochs} epochs)" for g in self.grid)
            ]
        return [d.describe() for d in self.dims]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


# --------------------------------------------------------------------------- loading


def available() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """`combo_alpha` -> experiments/combo_alpha.yaml; a path to a .yaml file as given."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise ConfigError(f"--search {name_or_path}: no such file")
        return path
    path = EXPERIMENTS / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--search {name_or_path}: unknown search; choose one of: {', '.join(available())} "
            "(or give a path to a .yaml file)"
        )
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err.__class__.__name__})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a search file is a mapping of keys (description, space, ...)")
    return raw


def load(
    name_or_path: str,
    profile: str = "full",
    overrides: Mapping[str, Any] | None = None,
) -> Search:
    """Read, merge the profile and flag overrides, and validate a search file.

    `overrides` may hold trials, max_epochs, concurrency, cpus, gpus, image_size,
    epoch_scale (the CLI's flags).
    """
    path = resolve(name_or_path)
    raw = read_yaml(path)
    return parse(raw, name=path.stem, source=str(path), profile=profile, overrides=overrides)


def parse(
    raw: Mapping[str, Any],
    name: str,
    source: str = "<dict>",
    profile: str = "full",
    overrides: Mapping[str, Any] | None = None,
) -> Search:
    where = source
    _check_keys(raw, TOP_KEYS, where, "key")
    data = copy.deepcopy(dict(raw))
    laptop = data.pop("laptop", None) or {}
    if not isinstance(laptop, dict):
        raise _fail(where, "laptop: must be a mapping of overrides")
    _check_keys(laptop, LAPTOP_KEYS, where, "laptop key", prefix="laptop.")
    if profile == "laptop":
        data = _merge(data, laptop)
    overrides = dict(overrides or {})

    description = data.get("description", "")
    if not isinstance(description, str):
        raise _fail(where, "description: must be text")

    objective = data.get("objective") or {}
    if not isinstance(objective, dict):
        raise _fail(where, "objective: must be a mapping {metric: ..., mode: ...}")
    _check_keys(objective, {"metric", "mode"}, where, "objective key", prefix="objective.")
    metric = objective.get("metric", "val_iou")
    if metric not in OBJECTIVES:
        raise _fail(where, f"objective.metric: {metric!r} is not one of {', '.join(OBJECTIVES)}")
    mode = objective.get("mode", "min" if metric == "val_loss" else "max")
    if mode not in ("max", "min"):
        raise _fail(where, f"objective.mode: {mode!r} must be max or min")

    fixed, fixed_per_model = _parse_fixed(data.get("fixed") or {}, where)
    if "image_size" in overrides:
        fixed["image_size"] = overrides["image_size"]

    asha = _parse_asha(data.get("asha", {}), where, overrides.get("max_epochs"))
    epoch_scale = overrides.get("epoch_scale", data.get("epoch_scale", 1.0))
    if not _number(epoch_scale) or epoch_scale <= 0:
        raise _fail(where, f"epoch_scale: {epoch_scale!r} must be a number above 0")

    grid = _parse_grid(data.get("grid") or [], where)
    dims = _parse_space(data.get("space") or {}, where)
    if grid and dims:
        raise _fail(where, "grid and space: give one or the other")
    if not grid and not dims:
        raise _fail(where, "space: empty; give at least one dimension (or a grid)")
    points = _parse_points(data.get("points") or [], where)

    trials = overrides.get("trials", data.get("trials", len(grid) or 10))
    concurrency = overrides.get("concurrency", data.get("concurrency", 1))
    for key, value in (("trials", trials), ("concurrency", concurrency)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(where, f"{key}: {value!r} must be a whole number, at least 1")

    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise _fail(where, "resources: must be a mapping {cpus: ..., gpus: ...}")
    _check_keys(resources, {"cpus", "gpus"}, where, "resources key", prefix="resources.")
    cpus = overrides.get("cpus", resources.get("cpus", 1))
    gpus = overrides.get("gpus", resources.get("gpus", "auto"))
    if not _number(cpus) or cpus <= 0:
        raise _fail(where, f"resources.cpus: {cpus!r} must be a number above 0")
    if gpus != "auto" and (not _number(gpus) or gpus < 0):
        raise _fail(where, f"resources.gpus: {gpus!r} must be auto or a number, at least 0")

    sampler = data.get("sampler") or {}
    if not isinstance(sampler, dict):
        raise _fail(where, "sampler: must be a mapping {startup_trials: N}")
    _check_keys(sampler, {"startup_trials"}, where, "sampler key", prefix="sampler.")
    startup = sampler.get("startup_trials", 5)
    if not isinstance(startup, int) or isinstance(startup, bool) or startup < 0:
        raise _fail(where, f"sampler.startup_trials: {startup!r} must be a whole number >= 0")

    search = Search(
        name=name,
        source=source,
        description=description,
        metric=metric,
        mode=mode,
        fixed=fixed,
        fixed_per_model=fixed_per_model,
        dims=dims,
        points=points,
        grid=grid,
        epoch_scale=float(epoch_scale),
        trials=trials,
        asha=asha,
        concurrency=concurrency,
        cpus=float(cpus),
        gpus=gpus,
        startup_trials=startup,
        raw={**data, "name": name},
    )
    _check_buildable(search, where)
    return search


# --------------------------------------------------------------------------- parts


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(
    mapping: Mapping[str, Any], allowed: set[str], where: str, what: str, prefix: str = ""
) -> None:
    for key in mapping:
        if key not in allowed:
            raise _fail(
                where, f"unknown {what} {prefix}{key!r}; known: {', '.join(sorted(allowed))}"
            )


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _config_keys() -> set[str]:
    return set(field_types())


def _check_setting(key: str, where: str, model: str | None = None, shared: bool = False) -> None:
    if key in STUDY_OWNED:
        raise _fail(
            where,
            f"{key!r}: the epoch budget is asha.max_epochs (or an `epochs` dimension in space, "
            "or a grid entry)",
        )
    if key in SHARED and not shared:
        raise _fail(
            where,
            f"{key!r} fixes the data set and split that every trial shares: set it in `fixed`",
        )
    if key not in _config_keys():
        raise _fail(where, f"unknown setting {key!r}; known: {', '.join(sorted(_config_keys()))}")
    if model is not None and key in MODEL_KEYS and key not in model_params(model):
        raise _fail(
            where,
            f"{key!r} does not apply to model {model!r} (its knobs: "
            f"{', '.join(model_params(model))})",
        )


def _parse_fixed(fixed: Any, where: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if not isinstance(fixed, dict):
        raise _fail(where, "fixed: must be a mapping of settings")
    top: dict[str, Any] = {}
    per_model: dict[str, dict[str, Any]] = {}
    for key, value in fixed.items():
        if key in MODELS:
            if not isinstance(value, dict):
                raise _fail(where, f"fixed.{key}: a model block must be a mapping of settings")
            for sub in value:
                _check_setting(sub, f"{where}: fixed.{key}", model=key)
            per_model[key] = dict(value)
        else:
            _check_setting(key, f"{where}: fixed", shared=True)
            top[key] = value
    try:
        TrainConfig.from_dict({k: v for k, v in top.items()})
    except ConfigError as err:
        # model knobs of the fixed model may legitimately sit at top level; anything else
        # that fails here is a bad value
        raise _fail(where, f"fixed: {err}") from None
    return top, per_model


def _parse_asha(asha: Any, where: str, max_epochs_flag: int | None) -> Asha:
    if asha is False:
        asha = {"enabled": False}
    if asha is None:
        asha = {}
    if not isinstance(asha, dict):
        raise _fail(
            where, "asha: must be a mapping {max_epochs, grace_period, reduction_factor} or false"
        )
    _check_keys(
        asha,
        {"max_epochs", "grace_period", "reduction_factor", "enabled"},
        where,
        "asha key",
        prefix="asha.",
    )
    max_epochs = max_epochs_flag if max_epochs_flag is not None else asha.get("max_epochs", 20)
    grace = asha.get("grace_period", 1)
    factor = asha.get("reduction_factor", 3)
    for key, value in (("max_epochs", max_epochs), ("grace_period", grace)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(where, f"asha.{key}: {value!r} must be a whole number, at least 1")
    if not _number(factor) or factor <= 1:
        raise _fail(where, f"asha.reduction_factor: {factor!r} must be a number above 1")
    grace = min(grace, max_epochs)  # --max-epochs below the grace period: one rung
    return Asha(max_epochs, grace, float(factor), bool(asha.get("enabled", True)))


def _parse_dim(key: str, spec: Any, where: str, model: str | None) -> Dim:
    here = f"{where}: space.{model + '.' if model else ''}{key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{here}: must be a mapping like {{uniform: [low, high]}}")
    kinds = [k for k in spec if k in KINDS]
    others = [k for k in spec if k not in KINDS and k != "when"]
    if others:
        raise ConfigError(
            f"{here}: unknown key {others[0]!r}; use one of {', '.join(KINDS)} (and `when`)"
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
        if len(values) != 2 or not all(_number(v) for v in values):
            raise ConfigError(f"{here}: {kind} needs [low, high] as two numbers")
        low, high = values
        if kind == "int" and not all(isinstance(v, int) for v in values):
            raise ConfigError(f"{here}: int needs whole numbers, got [{low}, {high}]")
        if low >= high:
            raise ConfigError(f"{here}: bad range [{low}, {high}]: low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{here}: bad range [{low}, {high}]: loguniform needs low above 0")
        values = [float(low), float(high)] if kind != "int" else [low, high]
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{here}.when: must be a mapping of settings, like {{loss: combo}}")
    for wkey in when:
        _check_setting(wkey, f"{here}.when")
    return Dim(key, kind, tuple(values), model, tuple(when.items()))


def _parse_space(space: Any, where: str) -> list[Dim]:
    if not isinstance(space, dict):
        raise _fail(where, "space: must be a mapping of dimensions")
    dims: list[Dim] = []
    for key, spec in space.items():
        if key in MODELS:
            if not isinstance(spec, dict):
                raise _fail(where, f"space.{key}: a model block must be a mapping of dimensions")
            for sub, sub_spec in spec.items():
                _check_setting(sub, f"{where}: space.{key}", model=key)
                dims.append(_parse_dim(sub, sub_spec, where, key))
        elif key == "epochs":
            dims.append(_parse_dim(key, spec, where, None))
        else:
            _check_setting(key, f"{where}: space")
            dims.append(_parse_dim(key, spec, where, None))
    # a top-level dimension sampled before the branches that depend on it
    dims.sort(key=lambda d: (d.model is not None, bool(d.when)))
    return dims


def _parse_points(points: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise _fail(where, "points: must be a list of mappings of settings")
    return [dict(p) for p in points]


def _parse_grid(grid: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
        raise _fail(where, "grid: must be a list of mappings, each with a name")
    names = []
    for i, entry in enumerate(grid):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(where, f"grid[{i}]: needs a name")
        if name in names:
            raise _fail(where, f"grid[{i}]: name {name!r} is used twice")
        names.append(name)
        for key in entry:
            if key not in ("name", "epochs"):
                _check_setting(key, f"{where}: grid[{i}] ({name})")
    return [dict(g) for g in grid]


def _check_buildable(search: Search, where: str) -> None:
    """Build a TrainConfig at every end of every dimension, each point and grid entry."""
    for i, entry in enumerate(search.grid):
        try:
            search.config_for(entry)
        except ConfigError as err:
            raise _fail(where, f"grid[{i}] ({entry['name']}): {err}") from None
    for dim in search.dims:
        base: dict[str, Any] = {}
        if dim.model is not None:
            base["model"] = dim.model
        base.update(dict(dim.when))
        for value in dim.extremes():
            if dim.key == "epochs":
                if not isinstance(value, int) or value < 1:
                    raise _fail(where, f"space.epochs: {value!r} must be a whole number >= 1")
                continue
            try:
                search.config_for({**base, dim.key: value})
            except ConfigError as err:
                label = f"space.{dim.model + '.' if dim.model else ''}{dim.key}"
                raise _fail(where, f"{label}: {err}") from None
    for i, point in enumerate(search.points):
        model = search._model(point)
        for key in point:
            if search._dim_for(key, model) is None:
                raise _fail(where, f"points[{i}]: {key!r} is not a dimension of the space")
        try:
            search.config_for(point)
        except ConfigError as err:
            raise _fail(where, f"points[{i}]: {err}") from None
