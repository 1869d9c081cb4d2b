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
    decisions: fixed                              # proposals and ASHA's stops in the trials'
                                                  # order (the default), or `arrival`
    confirm: {finalists: 3, seeds: 3}             # the top 3 retrained to the full budget (folds,
                                                  # or 3 seeds) and compared paired; or false
    concurrency: 2
    time_budget: 8h                               # the invocation's wall time (study.budget)
    cost: training_seconds                        # a second objective (study.front)
    resources: {cpus: 1, gpus: auto}              # per trial; auto: 1 if CUDA is visible
    sampler: {startup_trials: 5}                  # random trials before TPE takes over
    laptop: {...}                                 # overrides for the laptop profile

A setting is any TrainConfig key, model knobs included: each model's knobs are the ones
it declares where it registers (flairseg.models), so this module lists none of them.
Every key is checked on load: an unknown key, a bad range, a misspelt model or a
value no model can be built with fails naming the key, before Ray starts.

Hostile input fails the same way, in one short line: a file over MAX_FILE_BYTES, any
YAML alias (`*name`: no "billion laughs" can expand), nesting deeper than MAX_DEPTH
(refused while PyYAML composes, before anything is built), trials above MAX_TRIALS, an
epoch count above MAX_EPOCHS; an error quotes a value only as a short `excerpt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError

from flairseg.errors import ConfigError
from study import budget, front
from study.search_answer import parse_confirm, parse_decisions
from study.search_checks import (
    MAX_EPOCH_SCALE,
    MAX_EPOCHS,
    MAX_TRIALS,
    apply_profile,
    check_buildable,
    check_count,
    is_number,
    parse_asha,
    parse_cv,
    parse_fixed,
    parse_objective,
    parse_resources,
    parse_runs,
    parse_sampler,
    refuse,
)
from study.space import EXCERPT_CHARS, Search, clip, excerpt, fail  # noqa: F401  (re-exported)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
MAX_FILE_BYTES = 1024**2  # a search file is a page of YAML (the shipped ones: under 2 KB)
MAX_DEPTH = 20  # nesting levels, the top mapping the first (the shipped searches: 6)
FLAGS = "the flags"  # check_budget's source for --trials and --max-epochs


def available() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """`combo_alpha` -> experiments/combo_alpha.yaml; a path to a .yaml file as given."""
    path = Path(name_or_path)
    shown = clip(name_or_path, 3 * EXCERPT_CHARS)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise ConfigError(f"--search {shown}: no such file")
        return path
    path = EXPERIMENTS / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--search {shown}: unknown search; choose one of: {', '.join(available())} "
            "(or give a path to a .yaml file)"
        )
    return path


class Refused(ComposerError):
    """Valid YAML that a search file may not hold (an alias, nesting past MAX_DEPTH)."""


class SearchLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses aliases and deep nesting while it composes, so
    an alias bomb is refused before it expands and a deep file before the stack runs out."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            why = "a YAML alias (*name): a search file writes each value out"
            raise Refused(None, None, why, event.start_mark)
        if self.depth >= MAX_DEPTH:
            why = f"nested more than {MAX_DEPTH} levels deep"
            raise Refused(None, None, why, event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key written twice in one mapping is refused (YAML lets the last one win)."""
        first: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: {...}`: merged, not a key
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if earlier is not key_node.start_mark:
                lines = f"lines {earlier.line + 1} and {key_node.start_mark.line + 1}"
                raise Refused(None, None, f"key {key!r} given twice ({lines})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_text(path: Path) -> str:
    """The file's text; one over MAX_FILE_BYTES is refused without reading it all."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) <= MAX_FILE_BYTES:
            return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err.__class__.__name__})") from None
    raise ConfigError(
        f"{path}: larger than {MAX_FILE_BYTES // 1024**2} MiB: a search file is a page of YAML"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """A search file's mapping, read with `SearchLoader`; anything else is one ConfigError."""
    text = read_text(path)
    try:
        raw = yaml.load(text, Loader=SearchLoader)  # a SafeLoader: builds no objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = clip(getattr(err, "problem", None) or "invalid YAML", 2 * EXCERPT_CHARS)
        what = "refused" if isinstance(err, Refused) else "not valid YAML"
        raise ConfigError(f"{path}: {what}{where}: {problem}") from None
    except ValueError as err:  # a value YAML reads but Python cannot build: 2020-13-45
        raise ConfigError(f"{path}: not valid YAML: {clip(str(err), 2 * EXCERPT_CHARS)}") from None
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


def check_budget(trials: Any, max_epochs: Any, source: str) -> None:
    """Refuse trials outside [1, MAX_TRIALS] or max_epochs outside [1, MAX_EPOCHS] (None:
    not given). `source` FLAGS names --trials and --max-epochs; a file's path, its keys."""
    flags = source == FLAGS
    if trials is not None:
        check_count(trials, "--trials" if flags else f"{source}: trials", MAX_TRIALS)
    if max_epochs is not None:
        label = "--max-epochs" if flags else f"{source}: asha.max_epochs"
        check_count(max_epochs, label, MAX_EPOCHS)


def parse_counts(
    data: Mapping[str, Any], overrides: Mapping[str, Any], where: str, runs: int
) -> tuple[float, int, int]:
    """epoch_scale, trials and concurrency: a flag's (named as the flag) or the file's."""
    scale = overrides.get("epoch_scale", data.get("epoch_scale", 1.0))
    if not is_number(scale) or not 0 < scale <= MAX_EPOCH_SCALE:
        label = "--epoch-scale" if "epoch_scale" in overrides else f"{where}: epoch_scale"
        raise refuse(label, scale, f"must be a number above 0, at most {MAX_EPOCH_SCALE:g}")
    trials = overrides.get("trials", data.get("trials", runs or 10))
    check_budget(trials, None, FLAGS if "trials" in overrides else where)  # a flag: again
    concurrency = overrides.get("concurrency", data.get("concurrency", 1))
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        label = "--concurrency" if "concurrency" in overrides else f"{where}: concurrency"
        raise refuse(label, concurrency, "must be a whole number, at least 1")
    return float(scale), trials, concurrency


def parse_cost(data: Mapping[str, Any], overrides: Mapping[str, Any], where: str) -> Any:
    """The search's cost (study.front.Cost), None without one; a search with one answers
    by its Pareto front, and a confirmation asked for beside it is refused."""
    cost = front.parse(data.get("cost"), where)
    asked = overrides.get("confirm") or data.get("confirm") not in (None, False)
    if cost is not None and asked:
        label = "--confirm" if overrides.get("confirm") else f"{where}: confirm"
        raise ConfigError(
            f"{label}: a search with a cost answers by its Pareto front; confirming "
            "finalists is not done with one (drop it, or the cost)"
        )
    return cost


def parse(
    raw: Mapping[str, Any],
    name: str,
    source: str = "<dict>",
    profile: str = "full",
    overrides: Mapping[str, Any] | None = None,
) -> Search:
    """Validate a search file's mapping into a `Search`; the first bad key fails, named."""
    where = source
    overrides = dict(overrides or {})
    # the flags first: --trials 1000000000 is named whatever the file holds
    check_budget(overrides.get("trials"), overrides.get("max_epochs"), FLAGS)
    data = apply_profile(raw, where, profile)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail(where, "description: must be text")
    metric, mode = parse_objective(data.get("objective") or {}, where)
    fixed, fixed_per_model = parse_fixed(data.get("fixed") or {}, where)
    if "image_size" in overrides:
        fixed["image_size"] = overrides["image_size"]
    asha = parse_asha(data.get("asha", {}), where, overrides.get("max_epochs"))
    grid, dims, points = parse_runs(data, where)
    epoch_scale, trials, concurrency = parse_counts(data, overrides, where, len(grid))
    cpus, gpus = parse_resources(data.get("resources") or {}, overrides, where)
    confirm, confirm_seeds = parse_confirm(data.get("confirm"), where, overrides.get("confirm"))
    cost = parse_cost(data, overrides, where)
    confirm = 0 if cost is not None else confirm  # answered by its front (study.front)
    time_budget = None
    if "time_budget" in overrides:
        time_budget = budget.parse(overrides["time_budget"], "--time-budget")
    elif data.get("time_budget") is not None:
        time_budget = budget.parse(data["time_budget"], f"{where}: time_budget")
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
        epoch_scale=epoch_scale,
        trials=trials,
        asha=asha,
        concurrency=concurrency,
        cpus=float(cpus),
        gpus=gpus,
        startup_trials=parse_sampler(data.get("sampler") or {}, where),
        folds=parse_cv(data.get("cv"), where, overrides.get("folds")),
        decisions=parse_decisions(data, overrides, where),
        confirm=confirm,
        confirm_seeds=confirm_seeds,
        time_budget=time_budget,
        cost=cost,
        raw={**data, "name": name},
    )
    check_buildable(search, where)
    return search
