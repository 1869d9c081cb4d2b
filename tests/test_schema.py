"""The tracking schema: stored forms of the split and the objective, the base settings, the
paged run search, and the torch-free imports the report relies on."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from flairseg.config import MODEL_KEYS, TrainConfig
from flairseg.evolution import EVOLUTION_FILE
from study import schema, tracking

REPO = Path(__file__).resolve().parents[1]
SPLIT = {"train": ["O'Brien_1", "p2"], "val": ["p3"], "test": []}


def test_split_is_stored_as_json_and_read_back() -> None:
    text = schema.dump_split(SPLIT)
    assert text == '{"train": ["O\'Brien_1", "p2"], "val": ["p3"], "test": []}'
    assert schema.load_split(text) == SPLIT


def test_the_old_str_dict_split_is_still_read() -> None:
    old = str(SPLIT)  # what study.run wrote before the schema: a Python literal
    assert old.startswith("{'train': [\"O'Brien_1\"")  # quote replacement would break this
    assert schema.load_split(old) == SPLIT
    tuples = str({k: tuple(v) for k, v in SPLIT.items()})
    assert schema.load_split(tuples) == SPLIT


@pytest.mark.parametrize(
    "text",
    ["", "not a split", "[1, 2]", "{'train': [1]}", "__import__('os').getcwd()", '{"a": "b"}'],
)
def test_an_unreadable_split_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="split"):
        schema.load_split(text)


def test_the_objective_keeps_its_stored_string() -> None:
    assert schema.dump_objective("val_iou", "max") == "val_iou (max)"
    assert schema.load_objective("val_iou (max)") == ("val_iou", "max")
    assert schema.load_objective(schema.dump_objective("val_loss", "min")) == ("val_loss", "min")
    assert schema.load_objective(None) == ("val_iou", "max")  # a parent run without the param
    assert schema.load_objective("val_dice") == ("val_dice", "max")


def test_base_params_are_trainconfig_fields_less_the_model_knobs() -> None:
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(schema.BASE_PARAMS) == [f for f in fields if f not in MODEL_KEYS]
    assert all(schema.is_model_knob(k) for k in MODEL_KEYS)
    assert not any(schema.is_model_knob(k) for k in (*schema.BASE_PARAMS, "sampled.lr"))


def test_names_shared_with_the_study_side_agree() -> None:
    assert f"{schema.Artifact.EVOLUTION_DIR}/{EVOLUTION_FILE}" == schema.Artifact.EVOLUTION
    assert tracking.METRIC_KEYS is schema.METRIC_KEYS
    assert tracking.default_uri is schema.default_uri
    assert schema.stopped_status(3) == "stopped at epoch 3"
    assert schema.is_scored("stopped at epoch 3") and schema.is_scored("completed")
    assert not schema.is_scored("failed") and not schema.is_scored("killed")


class _Page(list):
    def __init__(self, runs: list, token: str | None) -> None:
        super().__init__(runs)
        self.token = token


def test_study_runs_reads_every_page_with_one_query() -> None:
    calls = []

    def search_runs(ids, query, max_results, page_token):
        calls.append((ids, query, page_token))
        start = int(page_token or 0)
        return _Page(list(range(start, start + 2)), str(start + 2) if start < 4 else None)

    c = SimpleNamespace(search_runs=search_runs)
    assert tracking.study_runs(c, "7", "s", role="trial", status="RUNNING") == list(range(6))
    query = "tags.study = 's' and tags.role = 'trial' and attributes.status = 'RUNNING'"
    assert calls == [(["7"], query, None), (["7"], query, "2"), (["7"], query, "4")]
    assert schema.study_query(None, schema.Role.STUDY) == "tags.role = 'study'"


@pytest.mark.parametrize(
    ("module", "banned"),
    [
        ("dashboards.report", ("torch",)),
        ("flairseg.viz", ("torch",)),
        ("study.schema", ("torch", "ray", "optuna", "mlflow")),
        ("flairseg.cvkeys", ("torch",)),
    ],
)
def test_torch_free_modules_import_no_torch(module: str, banned: tuple[str, ...]) -> None:
    code = (
        f"import sys, {module}\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {banned!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"


def test_the_schema_takes_from_flairseg_only_the_torch_free_score_names() -> None:
    code = "import sys, study.schema\nprint(sorted(m for m in sys.modules if m.startswith('flairseg')))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['flairseg', 'flairseg.cvkeys']"


def test_the_report_and_the_schema_spell_no_model_knob() -> None:
    """Model knobs come from the data (params not in BASE_PARAMS), never from a list here.

    `width` is left out: it is also Plotly's line width.
    """
    knobs = set(MODEL_KEYS) - {"width"}
    for path in [*sorted((REPO / "dashboards").glob("*.py")), REPO / "study" / "schema.py"]:
        strings = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not strings & knobs, f"{path.name} spells {sorted(strings & knobs)}"


def test_a_study_experiment_opens_on_its_runs_in_the_mlflow_ui(tmp_path) -> None:
    """MLflow 3's UI shows an experiment of unknown kind as GenAI traces: ours say training."""
    from mlflow.tracking import MlflowClient

    from tests.study_helpers import mlflow_template

    db = tmp_path / "mlflow.db"
    db.write_bytes(mlflow_template().read_bytes())
    uri = f"sqlite:///{db}"
    new = tracking.open_experiment(uri, "made")
    c = MlflowClient(uri)
    older = c.create_experiment("older")  # as an earlier version of this project made it
    assert tracking.open_experiment(uri, "older") == older
    key, kind = schema.EXPERIMENT_KIND
    assert (key, kind) == ("mlflow.experimentKind", "custom_model_development")
    for exp_id in (new, older):
        assert c.get_experiment(exp_id).tags[key] == kind
