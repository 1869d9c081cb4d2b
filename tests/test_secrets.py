"""A password given in a URL is taken out at the door and named without it. A whole study on a
PostgreSQL that asks for a password (with a Ray token and an MLflow login) is in
test_cluster.py: the password, the token and the login are written nowhere there.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
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


def test_an_error_is_one_line_without_a_taken_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "_TAKEN", {PASSWORD})
    err = ConnectionError(f"  cannot reach u:{PASSWORD}@h\n{'x' * 300}\n")
    assert secrets.first_line(err) == "cannot reach u:***@h"
    assert secrets.first_line(ValueError("y" * 300)) == "y" * 200
    assert secrets.first_line(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_an_address_without_a_scheme_loses_its_password_too() -> None:
    assert secrets.redact(f"u:{ENCODED}@10.0.0.5:6379") == "u:***@10.0.0.5:6379"
    assert secrets.redact("u:secret@host") == "u:***@host"
    assert secrets.without_password("u:secret@host:6379") == ("u@host:6379", "u", "secret")
    assert secrets.redact("u:pa/ss#x?y@host:1") == "u:***@host:1"  # ends no netloc here
    assert secrets.without_password("u:pa/ss@h:1") == ("u@h:1", "u", "pa/ss")
    assert secrets.redact("10.0.0.5:6379") == "10.0.0.5:6379"  # nothing to hide
    assert secrets.redact("auto") == "auto"


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--storage", f"s3://k:{ENCODED}@b/x"),
        ("--address", f"ray://u:{ENCODED}@127.0.0.1:1"),
        ("--address", f"u:{ENCODED}@127.0.0.1:1"),  # no scheme
        ("--address", "u:plainSecret1@127.0.0.1:1"),
    ],
)
def test_a_password_that_cannot_be_handed_on_is_refused(
    flag: str, value: str, tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    code, out, err = env.run_here("--search", "combo_alpha", flag, value)
    assert code == 2 and "give it through the environment" in err, err
    assert PASSWORD not in out + err and ENCODED not in out + err
    assert "plainSecret1" not in out + err
    assert not (tmp_path / "mlflow.db").exists()


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
