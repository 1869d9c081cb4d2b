"""A validated search: the dimensions Optuna samples, ASHA's budget, and the runs it makes.

`study.search` reads and checks a search file into a `Search`; this module holds what
the rest of `study` uses of it, and how an error quotes a user's value (`excerpt`, `brief`).
"""

from __future__ import annotations

import copy
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flairseg.config import TrainConfig
from flairseg.errors import ConfigError

EXCERPT_CHARS = 40  # the most of a user's value that an error message quotes
BRIEF_CHARS = 160  # the most of a nested error's message (it may quote a value whole)

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = EXCERPT_CHARS
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2
_LONG_WORD = re.compile(rf"\S{{{EXCERPT_CHARS + 1},}}")


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` cut to at most `limit` characters, ending in "..." where it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def excerpt(value: Any) -> str:
    """A user's value as an error message quotes it: its repr, at most EXCERPT_CHARS long."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<a {type(value).__name__} too long to show>"
    return clip(text)


def brief(err: Exception) -> str:
    """A nested error's message (it may quote a value whole): each overlong word cut in
    its middle, then the whole, so that its start and its end stay."""
    half = EXCERPT_CHARS // 2
    text = str(err).replace("\n", " ")
    text = _LONG_WORD.sub(lambda m: m[0][:half] + "..." + m[0][3 - half :], text)
    if len(text) <= BRIEF_CHARS:
        return text
    return text[: BRIEF_CHARS - 60] + " ... " + text[-55:]


def fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """`TrainConfig.from_dict`, refusing first a whole number too large for a float (which
    it would fail on with an OverflowError that names no key)."""
    for key, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                float(value)
            except OverflowError:
                raise ConfigError(f"{key}={excerpt(value)} is too large a number") from None
    return TrainConfig.from_dict(values)


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
    folds: int | None = None  # K-fold cross-validated trials (cv: {folds: K}); None: one split
    decisions: str = "fixed"  # fixed: in the trials' order (study.ordered); arrival: as they come
    confirm: int = 3  # finalists the confirmation stage retrains (study.confirm); 0: none
    confirm_seeds: int = 3  # seeds each finalist is retrained with when not cross-validated
    time_budget: float | None = None  # seconds of wall time per invocation (study.budget)
    cost: Any = None  # study.front.Cost: a second objective, minimised; None: one objective

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
        merged.update(self.fixed_per_model.get(model, {}) if isinstance(model, str) else {})
        merged.update(values)
        epochs = merged.get("epochs", self.asha.max_epochs)
        if "epochs" in values or self.grid:
            epochs = max(1, round(epochs * self.epoch_scale))
        merged["epochs"] = min(int(epochs), self.asha.max_epochs)
        return build_config(merged)

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
