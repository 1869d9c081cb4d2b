"""The report's one read of MLflow: a study's runs, curves and pictures as plain data.

Everything a figure draws is loaded here, through the names of `study.schema`, so the
figure builders hold no MLflow client and can be fed a `StudyData` made by hand. Every
string read here is held as the report shows it, escaped by `label` (Plotly draws text as
a subset of HTML), so names with markup are text in every figure, table and the page.
Nothing here imports torch: the report runs where only MLflow is installed.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flairseg.cvkeys import std_key
from flairseg.errors import ConfigError
from study import schema
from study.schema import Param, Role, Tag

# the base settings a reader compares trials on, in the report's order around the model
# knobs: alpha and lr first, then the knobs, then epochs, then any other base setting
LEADING = ("alpha", "lr")
TRAILING = ("epochs",)
GROUPING = ("model", "loss")  # the report's groups, never an axis


@dataclass
class EvolutionFrames:
    """A trial's fixed val slices over its epochs, as its `evolution.npz` holds them.

    images (K, H, W) uint8 FLAIR; masks (K, H, W) {0,1}; probs (E, K, H, W) uint8 (p*255).
    """

    names: list[str]
    epochs: list[int]
    images: np.ndarray
    masks: np.ndarray
    probs: np.ndarray

    def prob(self, epoch_index: int, k: int) -> np.ndarray:
        """The probability map (H, W) float32 in [0, 1] of slice `k` after one epoch."""
        return self.probs[epoch_index][k].astype(np.float32) / 255


@dataclass
class Trial:
    """One trial run: its tags and params as logged, its final metrics and its curve."""

    run_id: str
    name: str
    number: int
    model: str
    loss: str
    status: str
    params: dict[str, str]  # training settings, in the order the study logged them
    sampled: list[str]  # the settings Optuna proposed (`sampled.*`, short names)
    metrics: dict[str, float]
    epochs: int
    planned: int
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, objective)
    # cross-validated: (epoch, the objective's sd over the folds); empty otherwise
    curve_std: list[tuple[int, float]] = field(default_factory=list)

    @property
    def group(self) -> str:
        return f"{self.model} / {self.loss}"

    @property
    def ok(self) -> bool:
        """Ended with scores: completed, or stopped early by ASHA."""
        return schema.is_scored(self.status)

    @property
    def stopped(self) -> bool:
        return schema.is_stopped(self.status)

    def spread(self, key: str) -> float | None:
        """The sd over the folds of a final score (`val_iou_std`); None if not logged."""
        value = self.metrics.get(std_key(key))
        return value if finite(value) else None

    @property
    def knobs(self) -> list[str]:
        """The knobs of this trial's model: every param that is not a base setting."""
        return [k for k in self.params if schema.is_model_knob(k)]


@dataclass
class Mattered:
    """What mattered (study.importance), as the latest invocation's parent run logged it:
    each part ("objective", "cost") its ranking {param: share}, largest first, or why it
    has none."""

    rankings: dict[str, dict[str, float]]
    why: dict[str, str] = field(default_factory=dict)


@dataclass
class StudyData:
    """One study as the report draws it; `tags` are its latest invocation's parent tags."""

    experiment: str
    study: str
    uri: str
    trials: list[Trial]
    metric: str
    mode: str
    tags: dict[str, str] = field(default_factory=dict)
    invocations: int = 1
    wall_s: float = 0.0  # over all invocations
    split: dict[str, list[str]] | None = None  # None: the tag is missing or unreadable
    evolutions: dict[str, EvolutionFrames] = field(default_factory=dict)  # by run id
    # K of a patient K-fold cross-validated study: its scores are fold means with a spread
    folds: int | None = None
    importance: Mattered | None = None  # None: the latest invocation logged none
    answer: dict | None = None  # its comparison.json (dashboards.answer); None: none or bad
    front: dict | None = None  # its front.json (dashboards.front); None: one objective

    def best_of(self, trials: list[Trial]) -> Trial | None:
        scored = [t for t in trials if t.ok and finite(t.metrics.get(self.metric))]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.metrics[self.metric])

    def groups(self) -> dict[str, list[Trial]]:
        out: dict[str, list[Trial]] = {}
        for t in sorted(self.trials, key=lambda t: (t.model, t.loss, t.number)):
            out.setdefault(t.group, []).append(t)
        return out

    def bests(self) -> list[Trial]:
        """The best of each group and the best of the study: the trials with pictures."""
        picks = [self.best_of(ts) for ts in self.groups().values()] + [self.best_of(self.trials)]
        return list({t.run_id: t for t in picks if t is not None}.values())

    def evolution_of(self, trial: Trial | None) -> EvolutionFrames | None:
        """The trial's saved predictions, None if it has none or none with an epoch."""
        frames = self.evolutions.get(trial.run_id) if trial is not None else None
        return frames if frames is not None and len(frames.probs) else None

    def hyperparameters(self) -> list[str]:
        """The axes to compare trials on: params sampled by the search, or that vary.

        A base setting varies if trials differ in it; a model knob if trials of one model
        differ in it (`depth` of a U-Net and of a SETR are different things). Model and
        loss are the groups, not axes. Order: alpha, lr, the model knobs as first logged,
        epochs, then any other base setting in TrainConfig's order.
        """
        sampled = {k for t in self.trials for k in t.sampled}
        seen = list(dict.fromkeys(k for t in self.trials for k in t.params))
        picked = [k for k in seen if k not in GROUPING and (k in sampled or self._varies(k))]
        knobs = [k for k in picked if schema.is_model_knob(k)]
        rest = [k for k in schema.BASE_PARAMS if k in picked and k not in LEADING + TRAILING]
        return (
            [k for k in LEADING if k in picked]
            + knobs
            + [k for k in TRAILING if k in picked]
            + rest
        )

    def _varies(self, key: str) -> bool:
        values: dict[str, set[str]] = {}
        for t in self.trials:
            if key in t.params:
                scope = t.model if schema.is_model_knob(key) else ""
                values.setdefault(scope, set()).add(t.params[key])
        return any(len(v) > 1 for v in values.values())


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def label(text: Any) -> str:
    """User text as Plotly and the page show it: `<`, `>`, `&` escaped, never markup.

    Plotly draws `<a href>`, `<b>`, `<span style>`... in every label and decodes `&lt;`,
    `&gt;`, `&amp;` but not `&quot;`, so quotes stay as they are (text, never attributes).
    """
    return html.escape(str(text), quote=False)


def plain(text: str) -> str:
    """A `label` back as it was, for the one text Plotly draws as is: parcoords tick labels
    (d3 sets their text, so `&lt;` would show; markup there is never drawn)."""
    return html.unescape(text)


def load(uri: str, experiment: str, study: str | None = None) -> StudyData:
    """Every run of one study from MLflow; an unknown experiment or study fails in one line.

    Without `study`, the experiment's most recent one. The evolution pictures of each
    group's best trial are read here too, so building the figures needs no client.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    c = schema.client(uri)
    exp = schema.experiment_named(c, uri, experiment)
    parents = _study_parents(c, exp.experiment_id, experiment, study)
    study = parents[-1].data.tags[Tag.STUDY]
    metric, mode = schema.load_objective(parents[-1].data.params.get(Param.OBJECTIVE))
    folds = _folds(parents[-1])
    trials = []
    for run in schema.study_runs(c, exp.experiment_id, study, role=Role.TRIAL):
        trial = _trial(run)
        trial.curve = _history(c, run.info.run_id, metric)
        if folds:  # the spread band; a study without folds makes no extra request
            trial.curve_std = _history(c, run.info.run_id, std_key(metric))
        trials.append(trial)
    trials.sort(key=lambda t: t.number)
    tags = dict(parents[-1].data.tags)
    data = StudyData(
        label(experiment),
        label(study),
        label(uri),
        trials,
        label(metric),
        label(mode),
        tags={k: label(v) for k, v in tags.items()},
        invocations=len(parents),
        wall_s=sum(
            (p.info.end_time - p.info.start_time) / 1000
            for p in parents
            if p.info.end_time and p.info.start_time
        ),
        split=_split(tags.get(Tag.SPLIT, "")),
        folds=folds,
        importance=load_importance(c, parents[-1]),
        answer=load_answer(c, parents[-1]),
        front=load_front(c, parents[-1]),
    )
    with tempfile.TemporaryDirectory(prefix="flairseg-report-") as folder:
        for trial in data.bests():
            frames = load_evolution(c, trial.run_id, folder)
            if frames is not None:
                data.evolutions[trial.run_id] = frames
    return data


def _study_parents(c: Any, experiment_id: str, experiment: str, study: str | None) -> list:
    """The parent runs of `study` (the most recent study if None), by invocation."""
    parents = schema.study_runs(c, experiment_id, None, role=Role.STUDY)
    studies = sorted({p.data.tags.get(Tag.STUDY, "") for p in parents})
    if study is None:
        if not parents:
            raise ConfigError(f"--experiment {experiment}: holds no study runs (made by study.run)")
        study = max(parents, key=lambda p: p.info.start_time).data.tags[Tag.STUDY]
    elif study not in studies:
        raise ConfigError(
            f"--study {study}: no such study in experiment {experiment}; "
            f"studies there: {', '.join(studies) or 'none'}"
        )
    return sorted(
        (p for p in parents if p.data.tags.get(Tag.STUDY) == study),
        key=lambda p: int(p.data.tags.get(Tag.INVOCATION, 0)),
    )


def _history(c: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


def _folds(parent: Any) -> int | None:
    """K from the parent's `folds` tag (its param as a fallback); None: not cross-validated."""
    text = parent.data.tags.get(Tag.FOLDS) or parent.data.params.get(Param.FOLDS) or ""
    try:
        k = int(text)
    except ValueError:
        return None
    return k if k > 1 else None


def _trial(run: Any) -> Trial:
    tags, params = run.data.tags, run.data.params
    epochs = int(tags.get(Tag.EPOCHS, tags.get(Tag.EPOCHS_LOGGED, 0)) or 0)
    prefix = Param.SAMPLED_PREFIX
    return Trial(
        run_id=run.info.run_id,
        name=label(run.info.run_name or run.info.run_id[:8]),
        number=int(tags.get(Tag.OPTUNA_TRIAL, -1)),
        model=label(tags.get(Tag.MODEL, params.get("model", "?"))),
        loss=label(tags.get(Tag.LOSS, params.get("loss", "?"))),
        status=label(tags.get(Tag.STATUS, "unknown")),
        params={label(k): label(v) for k, v in params.items() if not k.startswith(prefix)},
        sampled=[
            label(k.removeprefix(prefix).split(".")[-1]) for k in params if k.startswith(prefix)
        ],
        metrics=dict(run.data.metrics),
        epochs=epochs,
        planned=int(tags.get(Tag.PLANNED_EPOCHS, epochs) or epochs),
    )


def _split(text: str) -> dict[str, list[str]] | None:
    try:
        split = schema.load_split(text)
    except ValueError:
        return None
    return {label(part): [label(p) for p in ids] for part, ids in split.items()}


def load_importance(c: Any, parent: Any) -> Mattered | None:
    """The parent run's `importance.*` and `cost_importance.*` metrics and, for a ranking
    it lacks, why (its importance.json, read only then); None when it logged neither."""
    rankings = {}
    for part, prefix in schema.IMPORTANCE_PREFIXES.items():
        found = [
            (label(k[len(prefix) :]), v)
            for k, v in parent.data.metrics.items()
            if k.startswith(prefix)
        ]
        rankings[part] = dict(sorted(found, key=lambda kv: (-kv[1], kv[0])))
    if all(rankings.values()):
        return Mattered(rankings)
    saved = _json_artifact(c, parent.info.run_id, schema.Artifact.IMPORTANCE)
    if saved is None:
        return Mattered(rankings) if any(rankings.values()) else None
    why = {}
    for part, ranking in rankings.items():
        entry = saved.get(part)
        text = entry.get("why") if isinstance(entry, dict) else None
        if not ranking:
            why[part] = label(text or saved.get("why") or "not computed")
    return Mattered(rankings, why)


def load_answer(c: Any, parent: Any) -> dict | None:
    """The parent run's comparison.json, every string escaped (`label`), keeping the finalists
    with a trial and per-patient scores; None: it has none, or its winner is none of them."""
    record = _escaped(_json_artifact(c, parent.info.run_id, schema.Artifact.COMPARISON))
    if not isinstance(record, dict):
        return None
    for key in ("finalists", "comparisons"):
        found = record.get(key)
        record[key] = [x for x in found if isinstance(x, dict)] if isinstance(found, list) else []
    kept = [f for f in record["finalists"] if isinstance(f.get("patients"), dict)]
    record["finalists"] = [f for f in kept if f.get("trial") is not None]
    trials = [f["trial"] for f in record["finalists"]]
    return record if record.get("winner") in trials else None


def load_front(c: Any, parent: Any) -> dict | None:
    """The parent run's front.json (study.front), every string escaped; None: it has none,
    or its answer is not on its front."""
    made = _escaped(_json_artifact(c, parent.info.run_id, schema.Artifact.FRONT))
    ok = isinstance(made, dict) and all(isinstance(made.get(k), list) for k in ("front", "points"))
    ok = ok and all(isinstance(made.get(k), str) for k in ("objective", "cost", "rule"))
    ok = ok and all(isinstance(p, dict) for p in made["front"] + made["points"])
    return made if ok and made.get("answer") in [p.get("trial") for p in made["front"]] else None


def _escaped(value: Any) -> Any:
    """A JSON value with every string in it, keys too, as the report shows it (`label`)."""
    if isinstance(value, str):
        return label(value)
    if isinstance(value, dict):
        return {label(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def _json_artifact(c: Any, run_id: str, name: str) -> dict | None:
    """A run's JSON artifact as a dict; None if it has none or it is not a JSON object."""
    with tempfile.TemporaryDirectory(prefix="flairseg-report-") as folder:
        try:
            value = json.loads(Path(c.download_artifacts(run_id, name, folder)).read_text())
        except Exception:  # never logged (an invocation that ended early), or unreadable
            return None
    return value if isinstance(value, dict) else None


def load_evolution(c: Any, run_id: str, folder: str) -> EvolutionFrames | None:
    """The run's `evolution.npz`, read into memory; None if it never wrote one."""
    try:
        path = Path(c.download_artifacts(run_id, schema.Artifact.EVOLUTION, folder))
    except Exception:  # an artifact a failed or killed trial never wrote
        return None
    if not path.exists():
        return None
    with np.load(path) as z:
        return EvolutionFrames(
            names=[label(n) for n in z["names"]],
            epochs=[int(e) for e in z["epochs"]],
            images=z["images"],
            masks=z["masks"],
            probs=z["probs"],
        )
