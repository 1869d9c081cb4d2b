"""The report's answer section, from a real SQLite MLflow store laid out as study.run writes
it (no Ray, no training): the parent run's comparison.json drawn as the finalists per patient
and the winner's paired differences, its title naming the winner and its verdict against the
runner-up; a study without it, or run with --no-confirm, says so; a malformed one never
breaks the report; markup in a label is shown as text."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from dashboards.answer import CONFIRMED, NONE
from dashboards.load import load
from dashboards.report import main
from study import schema
from study.schema import Artifact, Param, Role, Tag

PATIENTS = {"patient01": 0.9, "patient02": 0.5, "patient03": 0.7, "patient04": 0.6}
BOLD = "<b>bold</b>"
IMG = "<img src=x onerror=alert(1)>"
MARKUP = re.compile(r"<(b|img)\b|</b>")  # a user's markup left live in a figure's JSON


def finalist(trial: int, objective: float, shift: float, label: str | None = None) -> dict:
    """A finalist as study.run records it: per-patient volume Dice and IoU, `shift` below the
    winner's on every patient."""
    return {
        "trial": trial,
        "label": label or f"#{trial} alpha=0.41 lr=1.2e-03",
        "objective": objective,
        "objective_std": 0.05,
        "search_value": objective - 0.02,
        "search_epochs": 9,
        "epochs": 20,
        "rung": 9,
        "standing": 1.0,
        "patients": {
            p: {"volume_dice": v - shift, "iou": v - shift - 0.1} for p, v in PATIENTS.items()
        },
    }


def comparison(trial: int, metric: str, mean: float, verdict: str, p: float) -> dict:
    return {
        "trial": trial,
        "metric": metric,
        "n": len(PATIENTS),
        "mean_difference": mean,
        "ci_low": mean - 0.03,
        "ci_high": mean + 0.03,
        "p_value": p,
        "verdict": verdict,
    }


RECORD = {
    "objective": "val_iou",
    "mode": "max",
    "confidence": 0.95,
    "alpha": 0.05,
    "resamples": 9999,
    "seed": 0,
    "metrics": ["volume_dice", "iou"],
    "method": "folds",
    "replicas": 4,
    "winner": 3,
    "finalists": [finalist(3, 0.83, 0.0), finalist(5, 0.80, 0.02), finalist(1, 0.70, 0.2)],
    "comparisons": [
        comparison(5, "volume_dice", 0.02, "within noise", 0.3),
        comparison(5, "iou", 0.02, "within noise", 0.25),
        comparison(1, "volume_dice", 0.2, "better", 0.0004),
        comparison(1, "iou", 0.2, "better", 0.004),
    ],
}
# a finalist with nothing but its trial and patients; a comparison of another with nonsense
SPARSE = {
    "winner": 2,
    "finalists": [
        {"trial": 2, "patients": {"a": {"volume_dice": 0.5}}},
        {"trial": 4, "patients": {}},
    ],
    "comparisons": [
        {"trial": 4, "metric": "volume_dice", "mean_difference": "big", "p_value": None},
        7,
    ],
}
MARKED = {
    **RECORD,
    "finalists": [
        finalist(3, 0.83, 0.0, f"#3 {BOLD}"),
        {
            **finalist(5, 0.80, 0.02, f"#5 {IMG}"),
            "patients": {IMG: {"volume_dice": 0.4, "iou": 0.3}},
        },
    ],
    "comparisons": [{**comparison(5, "volume_dice", 0.02, BOLD, 0.3)}],
}
# by experiment: what the parent holds (None: no artifact) and its extra tags
STUDIES: dict[str, tuple[object, dict[str, str]]] = {
    "answered": (RECORD, {}),
    "older": (None, {}),
    "unconfirmed": (None, {CONFIRMED: "false"}),
    "not-json": ("{finalists: [", {}),
    "a-list": ([RECORD], {}),
    "no-winner": ({**RECORD, "winner": 9}, {}),
    "finalists-a-string": ({**RECORD, "finalists": "3, 5"}, {}),
    "sparse": (SPARSE, {}),
    "marked": (MARKED, {}),
}


def _log_study(c, tmp: Path, experiment: str, content: object, tags: dict[str, str]) -> None:
    """A parent run and trials #1, #3, #5 as study.run logs them (study/callbacks.py), the
    parent holding `content` as its comparison.json (a string as is, else as JSON)."""
    exp = c.create_experiment(experiment, artifact_location=(tmp / experiment).as_uri())
    parent = c.create_run(
        exp,
        run_name="s #1",
        tags={Tag.STUDY: "s", Tag.SEARCH: experiment, Tag.ROLE: Role.STUDY, Tag.INVOCATION: "1"}
        | {Tag.SPLIT: schema.dump_split({"train": ["a"], "val": list(PATIENTS), "test": ["t"]})}
        | tags,
    )
    pid = parent.info.run_id
    c.log_param(pid, Param.OBJECTIVE, schema.dump_objective("val_iou", "max"))
    for number, score in ((1, 0.68), (3, 0.81), (5, 0.79)):
        run = c.create_run(
            exp,
            run_name=f"#{number} unet combo",
            tags={Tag.PARENT: pid, Tag.STUDY: "s", Tag.ROLE: Role.TRIAL}
            | {Tag.OPTUNA_TRIAL: str(number), Tag.MODEL: "unet", Tag.LOSS: "combo"}
            | {Tag.STATUS: "completed", Tag.EPOCHS: "2", Tag.PLANNED_EPOCHS: "2"},
        )
        for k, v in {"model": "unet", "loss": "combo", "alpha": "0.41", "lr": "0.0012"}.items():
            c.log_param(run.info.run_id, k, v)
        for step in (1, 2):
            c.log_metric(run.info.run_id, "val_iou", score * step / 2, step=step)
        c.set_terminated(run.info.run_id, "FINISHED")
    if content is not None:
        path = tmp / f"{experiment}-artifact" / Artifact.COMPARISON
        path.parent.mkdir()
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        c.log_artifact(pid, str(path))
    c.set_terminated(pid, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real SQLite store, an experiment per case of STUDIES."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("answer")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    for experiment, (content, tags) in STUDIES.items():
        _log_study(c, tmp, experiment, content, tags)
    return uri


def report(store: str, experiment: str, tmp_path: Path) -> tuple[str, dict]:
    """The report's HTML, written by the command in process, and its answer figure's JSON."""
    out = tmp_path / f"{experiment}.html"
    assert main(["--mlflow-uri", store, "--experiment", experiment, "--out", str(out)]) == 0
    page = out.read_text()
    found = re.findall(r'<script type="application/json" id="fig-(\w+)-spec">(.*?)</script>', page)
    assert found[0][0] == "answer", [name for name, _ in found]  # the section first
    return page, json.loads(found[0][1])


def strings(value: object) -> list[str]:
    """Every string in a figure's JSON: names, text, hover, ticks, annotations, titles."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for v in items for s in strings(v)]


def texts(spec: dict) -> str:
    """The title and the annotations (an empty figure's reason, the subplot titles)."""
    layout = spec["layout"]
    return "\n".join([layout["title"]["text"], *(a["text"] for a in layout.get("annotations", []))])


def test_the_answer_names_the_winner_and_its_verdict(store: str, tmp_path: Path) -> None:
    assert load(store, "answered").answer == RECORD  # StudyData.answer: the artifact as logged
    page, spec = report(store, "answered", tmp_path)
    assert '<section id="answer">' in page
    title = spec["layout"]["title"]["text"]
    assert title.startswith("The answer: finalists confirmed and compared. Winner: #3 alpha=0.41")
    assert "val_iou 0.8300 ± 0.0500 over 4 folds (search 0.8100)" in title
    # the runner-up is #5 (the next best confirmed objective), not #1 which it beats
    assert (
        "the winner is within noise of the runner-up #5 alpha=0.41 lr=1.2e-03 in per-patient "
        "volume Dice (+0.020, 95 % CI [-0.010, +0.050], Wilcoxon p 0.30)" in title
    )
    *others, winner = [t for t in spec["data"] if t["xaxis"] == "x"]
    assert winner["name"] == "#3 alpha=0.41 lr=1.2e-03 (winner)"
    assert winner["marker"]["symbol"] == "star"
    assert [o["marker"]["symbol"] for o in others] == ["circle", "circle"]
    # patients by the winner's volume Dice, best first; each finalist's own score on each
    assert winner["x"] == ["patient01", "patient03", "patient04", "patient02"]
    assert winner["y"] == [0.9, 0.7, 0.6, 0.5]
    assert others[1]["y"] == pytest.approx([0.7, 0.5, 0.4, 0.3])  # #1, 0.2 below
    dice, iou = [t for t in spec["data"] if t["xaxis"] == "x2"]
    assert dice["name"] == "difference in volume Dice" and iou["name"] == "difference in IoU"
    assert dice["x"] == [0.02, 0.2] and dice["error_x"]["array"] == pytest.approx([0.03, 0.03])
    assert dice["error_x"]["arrayminus"] == pytest.approx([0.03, 0.03])
    assert dice["text"] == ["within noise, p 0.30", "better, p &lt; 0.001"]
    assert iou["text"] == ["within noise, p 0.25", "better, p 0.004"]
    assert dice["y"][0] < iou["y"][0]  # volume Dice above IoU (the axis is reversed)
    assert "Wilcoxon p 0.30, 4 patients: within noise" in dice["customdata"][0]
    ticks = spec["layout"]["yaxis2"]["ticktext"]
    assert ticks == ["#5 alpha=0.41 lr=1.2e-03", "#1 alpha=0.41 lr=1.2e-03"]
    zero = [s for s in spec["layout"]["shapes"] if s["x0"] == s["x1"] == 0]
    assert len(zero) == 1 and zero[0]["xref"] == "x2"


@pytest.mark.parametrize(
    ("experiment", "said"),
    [
        ("older", NONE.split(" (")[0]),
        ("unconfirmed", "This study's answer is unconfirmed (run with --no-confirm): its"),
    ],
    ids=["no-artifact", "no-confirm"],
)
def test_without_a_confirmed_answer_the_section_says_why(
    store: str, tmp_path: Path, experiment: str, said: str
) -> None:
    page, spec = report(store, experiment, tmp_path)
    assert spec["data"] == [] and said in texts(spec)
    assert 'id="fig-family"' in page  # the rest of the report is there
    if experiment == "unconfirmed":  # the search's best trial stands in, named as such
        said = texts(spec).replace("<br>", " ")
        assert "search's best trial, #3 unet combo (val_iou 0.8100)" in said


@pytest.mark.parametrize("experiment", ["not-json", "a-list", "no-winner", "finalists-a-string"])
def test_a_malformed_artifact_is_no_answer(store: str, tmp_path: Path, experiment: str) -> None:
    assert load(store, experiment).answer is None
    _, spec = report(store, experiment, tmp_path)
    assert NONE.split(" (")[0] in texts(spec)


def test_an_artifact_with_only_trials_and_patients_still_draws(store: str, tmp_path: Path) -> None:
    """Every key but a finalist's trial and patients is optional; a nonsense value is none."""
    answer = load(store, "sparse").answer
    assert answer is not None and answer["comparisons"] == [SPARSE["comparisons"][0]]
    _, spec = report(store, "sparse", tmp_path)
    title = spec["layout"]["title"]["text"]
    assert "Winner: #2, objective not logged" in title
    assert "no paired comparison with the runner-up #4 was logged" in title
    assert [t["name"] for t in spec["data"]] == ["#4", "#2 (winner)"]  # no difference drawn
    assert "no paired difference logged" in texts(spec)


def test_markup_in_a_label_is_shown_as_text(store: str, tmp_path: Path) -> None:
    _, spec = report(store, "marked", tmp_path)
    live = [s for s in strings(spec) if MARKUP.search(s)]
    assert live == []
    escaped = html.escape(BOLD, quote=False)
    assert f"Winner: #3 {escaped}," in spec["layout"]["title"]["text"]
    assert f"the winner is {escaped} against the runner-up #5" in spec["layout"]["title"]["text"]
    assert html.escape(IMG, quote=False) in spec["data"][0]["x"]  # a patient's name
    assert spec["data"][0]["name"] == f"#5 {html.escape(IMG, quote=False)}"


def test_the_runner_up_follows_the_mode_and_a_zero_score_is_a_score() -> None:
    """From hand-made data (as tests/test_report_data.py builds it): with mode min the
    runner-up is the next lowest objective; a patient the winner scored 0 is ranked, one it
    has no score for comes last; odd `metrics` and `confidence` fall back to the defaults."""
    from dashboards.answer import fig_answer
    from dashboards.load import StudyData

    patients = {"a": {"volume_dice": 0.0}, "b": {"volume_dice": 0.4}, "0": {}}
    record = {
        **RECORD,
        "mode": "min",
        "metrics": "volume_dice",
        "confidence": 95,
        "finalists": [
            {"trial": 3, "objective": 0.2, "patients": patients},
            {"trial": 5, "objective": 0.9, "patients": patients},
            {"trial": 1, "objective": 0.3, "patients": patients},
        ],
    }
    data = StudyData("e", "s", "sqlite:///x.db", [], "val_loss", "min", answer=record)
    fig = fig_answer(data)
    assert fig.data[2].name == "#3 (winner)"
    assert list(fig.data[2].x) == ["b", "a", "0"]  # 0.4, then 0, then no score
    title = fig.layout.title.text
    assert "better than the runner-up #1 in per-patient volume Dice (+0.200, 95 % CI" in title
    assert [t.name for t in fig.data[3:]] == ["difference in volume Dice", "difference in IoU"]
