"""Search files (experiments/*.yaml): loading, validation, and the space Optuna samples.

A search file holds data, not code:

    description: one line
    objective: {metric: val_iou, mode: max}      # the default
    fixed: {model: unet, loss: combo, unet: {depth: 3}}   # a model-named block applies
                                                           # only to that model
    space:                                        # sampled by Optuna (TPE)
      alpha: {uniform: [0.0, 1.0]}
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      batch_size: {choice: [8, 16, 32]}
      depth: {int: [1, 3]}
      alpha: {uniform: [0, 1], when: {loss: combo}}   # sampled only when loss is combo
      setr: {depth: {int: [2, 6]}}                  # sampled only when model is setr
    points: [{alpha: 0.7, lr: 0.001}]             # evaluated first, once per study
    grid: [{name: a, model: unet, epochs: 20}]    # instead of space: a fixed list of runs
    epoch_scale: 1.0                              # multiplies every epoch count (grid, budget)
    trials: 20
    asha: {max_epochs: 40, grace_period: 5, reduction_factor: 3}   # or `asha: false`
    cv: {folds: 4}                                # each trial: patient 4-fold cross-validation,
                                                  # ranked and stopped on the fold mean
    concurrency: 2
    resources: {cpus: 1, gpus: auto}              # per trial; auto: 1 if CUDA is visible
    sampler: {startup_trials: 5}                  # random trials before TPE takes over
    laptop: {...}                                 # overrides for the laptop profile

A setting is any TrainConfig key, model knobs included: each model's knobs are the ones
it declares where it registers (flairseg.models), so this module lists none of them.
Every key is checked on load: an unknown key, a bad range, a misspelt model or a
value no model can be built with fails naming the key, before Ray starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from flairseg.errors import ConfigError
from study.search_checks import (
    apply_profile,
    check_buildable,
    is_number,
    parse_asha,
    parse_cv,
    parse_fixed,
    parse_objective,
    parse_resources,
    parse_runs,
    parse_sampler,
)
from study.space import Search, fail  # noqa: F401  (Search: re-exported)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


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
    epoch_scale, folds (the CLI's flags).
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
    """Validate a search file's mapping into a `Search`; the first bad key fails, named."""
    where = source
    data = apply_profile(raw, where, profile)
    overrides = dict(overrides or {})
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail(where, "description: must be text")
    metric, mode = parse_objective(data.get("objective") or {}, where)
    fixed, fixed_per_model = parse_fixed(data.get("fixed") or {}, where)
    if "image_size" in overrides:
        fixed["image_size"] = overrides["image_size"]
    asha = parse_asha(data.get("asha", {}), where, overrides.get("max_epochs"))
    epoch_scale = overrides.get("epoch_scale", data.get("epoch_scale", 1.0))
    if not is_number(epoch_scale) or epoch_scale <= 0:
        raise fail(where, f"epoch_scale: {epoch_scale!r} must be a number above 0")
    grid, dims, points = parse_runs(data, where)
    trials = overrides.get("trials", data.get("trials", len(grid) or 10))
    concurrency = overrides.get("concurrency", data.get("concurrency", 1))
    for key, value in (("trials", trials), ("concurrency", concurrency)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(where, f"{key}: {value!r} must be a whole number, at least 1")
    cpus, gpus = parse_resources(data.get("resources") or {}, overrides, where)
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
        startup_trials=parse_sampler(data.get("sampler") or {}, where),
        folds=parse_cv(data.get("cv"), where, overrides.get("folds")),
        raw={**data, "name": name},
    )
    check_buildable(search, where)
    return search
