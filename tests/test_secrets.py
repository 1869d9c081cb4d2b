"""A password given in a URL is never written: not to MLflow, the report, the console, JSON,
Tune's pickles, the Optuna ledger or Ray's session folder (a real PostgreSQL that asks for it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from cluster import Postgres
from study_helpers import StudyEnv

from study import secrets

PASSWORD = "Fl41r:s3cr@t/!"  # characters a URL must encode
ENCODED = quote(PASSWORD, safe="")


def test_urls_lose_their_password_and_commands_name_the_variable() -> None:
    url = f"postgresql://flair:{ENCODED}@db:5432/optuna"
    assert secrets.redact(url) == "postgresql://flair:***@db:5432/optuna"
    assert secrets.without_password(url) == ("postgresql://flair@db:5432/optuna", "flair", PASSWORD)
    assert secrets.redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    line = secrets.command_line(
        ["--search", "x", "--optuna-storage", url, f"--mlflow-uri=http://u:{ENCODED}@h:5000"]
    )
    assert line == (
        'python -m study.run --search x --optuna-storage "$OPTUNA_STORAGE" '
        '--mlflow-uri "$MLFLOW_TRACKING_URI"'
    )


@pytest.mark.parametrize("flag", ["--storage", "--address"])
def test_a_password_that_cannot_be_handed_on_is_refused(
    flag: str, tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    value = f"ray://u:{ENCODED}@127.0.0.1:1" if flag == "--address" else f"s3://k:{ENCODED}@b/x"
    code, out, err = env.run_here("--search", "combo_alpha", flag, value)
    assert code == 2 and "give it through the environment" in err, err
    assert PASSWORD not in out + err and ENCODED not in out + err
    assert not (tmp_path / "mlflow.db").exists()


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 200_000_000:
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path))
    return found


@pytest.mark.slow
def test_a_study_on_a_password_database_writes_the_password_nowhere(
    tmp_path: Path, phantom_dir: Path
) -> None:
    pg = Postgres(password=PASSWORD)
    try:
        url = f"postgresql://postgres:{ENCODED}@127.0.0.1:{pg.port}/optuna"
        env = StudyEnv(tmp_path, phantom_dir)
        out = tmp_path / "summary.json"
        args = ("--search", "combo_alpha", "--image-size", "32", "--trials", "1")
        args += ("--max-epochs", "1", "--json", str(out))
        result = env.run(*args, "--optuna-storage", url)
        assert result.returncode == 0, result.stdout + result.stderr
        needles = [PASSWORD.encode(), ENCODED.encode()]
        shown = result.stdout + result.stderr
        assert not any(n.decode() in shown for n in needles), shown
        assert _files_holding(tmp_path, needles) == []
        session = Path("/tmp/ray/session_latest")
        if session.exists():  # Ray's copies of Tune's state
            assert _files_holding(session.resolve(), needles) == []
        (parent,) = [r for r in env.runs("combo_alpha") if r.data.tags.get("role") == "study"]
        tags = parent.data.tags
        assert tags["optuna_storage"] == f"postgresql://postgres@127.0.0.1:{pg.port}/optuna"
        assert '--optuna-storage "$OPTUNA_STORAGE"' in tags["command"]
        _assert_database_holds_no_password(url)
        assert json.loads(out.read_text())["best_config"]
        _reopen_from_the_variable(env, url, tags["optuna_storage"])
    finally:
        pg.close()


def _reopen_from_the_variable(env: StudyEnv, url: str, clean: str) -> None:
    """The recorded command's variable works: with $OPTUNA_STORAGE alone (no flag, no
    password file yet) the plan carries the URL without its password, and the study opens."""
    import optuna

    from study import ledger
    from study.cli import build_parser
    from study.plan import make_plan

    saved = dict(os.environ)
    try:
        os.environ.pop("PGPASSFILE", None)
        os.environ["OPTUNA_STORAGE"] = url
        argv = env.argv("--search", "combo_alpha", "--image-size", "32")[3:]
        plan = make_plan(build_parser().parse_args(argv))
        assert plan.optuna_url == clean
        assert "combo_alpha" in optuna.study.get_all_study_names(ledger.open_storage(clean))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _assert_database_holds_no_password(url: str) -> None:
    """The Optuna ledger (study and trial attributes) holds no password."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        for table in ("study_user_attributes", "trial_user_attributes", "trial_system_attributes"):
            rows = conn.execute(sqlalchemy.text(f"select value_json from {table}")).scalars()
            text = " ".join(rows)
            assert PASSWORD not in text and ENCODED not in text, table
    engine.dispose()


def test_an_unreachable_database_is_named_without_its_password(
    tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    url = f"postgresql://flair:{ENCODED}@127.0.0.1:1/optuna"
    code, out, err = env.run_here(
        "--search", "combo_alpha", "--image-size", "32", "--optuna-storage", url
    )
    assert code == 2 and "--optuna-storage postgresql://flair@127.0.0.1:1/optuna" in err, err
    assert PASSWORD not in out + err and ENCODED not in out + err
