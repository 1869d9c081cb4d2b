"""Search files: every shipped search loads; bad files fail before Ray starts, in one line, exit 2."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from study_helpers import GOOD_SEARCH, StudyEnv

from flairseg.errors import ConfigError
from flairseg.models import MODELS
from study import search as searches
from study.ledger import StudyLock
from tests.inproc import call_cli

GOOD = GOOD_SEARCH


@pytest.mark.parametrize("name", searches.available())
@pytest.mark.parametrize("profile", ["laptop", "full"])
def test_every_shipped_search_loads(name: str, profile: str) -> None:
    s = searches.load(name, profile)
    assert s.trials >= 1 and s.asha.max_epochs >= 1
    assert s.dims or s.grid


def test_the_five_searches_of_the_issue_exist() -> None:
    assert {"combo_alpha", "setr_shape", "family", "budget", "seed"} <= set(searches.available())


def test_combo_alpha_evaluates_the_seed_points_first() -> None:
    s = searches.load("combo_alpha")
    assert s.optuna_points()[:2] == [{"alpha": 0.7, "lr": 0.0001}, {"alpha": 0.5, "lr": 0.0001}]


@pytest.mark.parametrize("name", ["seed", "combo_alpha", "family", "budget"])
def test_the_seed_runs_train_with_the_seeds_learning_rate(name: str) -> None:
    """The seed trained all four runs with Adam at 1e-4: where a search starts from them
    (its points, or the seed's grid), they are the seed's."""
    s = searches.load(name)
    runs = s.grid or s.points
    assert runs
    assert {s.config_for(run).lr for run in runs} == {1e-4}


def test_family_branches_sample_only_their_own_knobs() -> None:
    import optuna

    s = searches.load("family", "laptop", {"image_size": 32})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        config = s(trial)["flairseg"]
        names = set(trial.params)
        if config["model"] == "unet":
            assert not any(n.startswith("setr.") for n in names)
            assert config["num_cuts"] is None
        else:
            assert not any(n.startswith("unet.") for n in names)
            assert config["width"] is None
        assert ("alpha" in names) == (config["loss"] == "combo")
        study.tell(trial, 0.0)


def test_search_validation_names_no_model_knob() -> None:
    # a model's own knobs come from the registry; only a key every model shares may be an example
    own = [key for key, owners in MODELS.union().items() if len(owners) < len(MODELS.names())]
    pattern = re.compile(rf"\b({'|'.join(own)})\b")
    tree = ast.parse(Path(searches.__file__).read_text())
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    assert not [t for t in texts if isinstance(t, str) and pattern.search(t)]


def test_a_model_block_refuses_another_models_knob() -> None:
    raw = {"fixed": {"model": "unet"}, "space": {"unet": {"dim": {"choice": [128, 256]}}}}
    with pytest.raises(
        ConfigError, match=r"space.unet: 'dim' does not apply to model 'unet' \(its knobs: depth"
    ):
        searches.parse(raw, name="bad")


def test_seed_grid_scales_its_epochs() -> None:
    s = searches.load("seed", "full", {"epoch_scale": 0.1})
    assert [s.config_for(g).epochs for g in s.grid] == [2, 2, 4, 35]


def test_max_epochs_caps_every_budget() -> None:
    s = searches.load("budget", "full", {"max_epochs": 3})
    assert s.config_for({"epochs": 40}).epochs == 3


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        (GOOD + "colour: red\n", "'colour'"),
        (GOOD.replace("uniform: [0.0, 1.0]", "uniform: [0.0, 2.0]"), "alpha"),
        (GOOD.replace("uniform: [0.0, 1.0]", "uniform: [1.0, 0.0]"), "bad range"),
        (GOOD.replace("model: unet", "model: unett"), "unett"),
        (GOOD.replace("alpha: {uniform", "alpah: {uniform"), "'alpah'"),
        (GOOD.replace("alpha: {uniform: [0.0, 1.0]}", "lr: {loguniform: [0, 1]}"), "loguniform"),
        (GOOD.replace("unet: {width: 8}", "unet: {num_cuts: 8}"), "num_cuts"),
        (GOOD + "laptop: {space: {}, turbo: 1}\n", "turbo"),
        (GOOD.replace("trials: 1", "trials: 0"), "trials"),
        (GOOD.replace("asha: {max_epochs: 1}", "asha: {max_epochs: 1, grace: 2}"), "grace"),
        ("space: [\n", "not valid YAML"),
        ("- just\n- a list\n", "a mapping"),
    ],
)
def test_bad_search_file_fails_before_ray_naming_the_key(
    tmp_path: Path, phantom_dir: Path, text: str, culprit: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    env = StudyEnv(tmp_path, phantom_dir)
    code, stdout, stderr = env.run_here("--search", str(path))
    assert code == 2, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert culprit in lines[0]
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (("--search", "no_such_search"), "unknown search"),
        (("--search", "combo_alpha", "--data", "/nonexistent/folder"), "--data"),
        (("--search", "combo_alpha", "--address", "127.0.0.1:9"), "--address"),
        (("--search", "combo_alpha", "--trials", "0"), "--trials"),
        (("--search", "combo_alpha", "--gpus-per-trial", "-1"), "--gpus-per-trial"),
        (("--search", "combo_alpha", "--image-size", "33"), "33"),
    ],
)
def test_bad_flags_exit_2_in_one_line(
    tmp_path: Path, phantom_dir: Path, args: tuple[str, ...], culprit: str
) -> None:
    code, stdout, stderr = StudyEnv(tmp_path, phantom_dir).run_here(*args)
    assert code == 2, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], stderr
    assert not (tmp_path / "studies").exists()


def test_the_command_itself_fails_in_one_line_without_a_traceback(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """The checks above run in process; this one goes through `python -m study.run`."""
    result = StudyEnv(tmp_path, phantom_dir, fresh=True).run(
        "--search", "combo_alpha", "--trials", "0"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == ["error: --trials 0: must be at least 1"]
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlflow.db").exists()


def test_unreachable_mlflow_server_exits_2_quickly(tmp_path: Path, phantom_dir: Path) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    argv = env.argv("--search", "combo_alpha")
    argv[argv.index("--mlflow-uri") + 1] = "http://127.0.0.1:9"
    result = call_cli(*argv[2:], cwd=tmp_path, env=env.env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--mlflow-uri http://127.0.0.1:9" in result.stderr
    assert not (tmp_path / "studies").exists()


def test_list_prints_every_search_with_its_space() -> None:
    result = call_cli("study.run", "--list", cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    for name in searches.available():
        assert f"{name}: " in result.stdout
    assert "alpha: uniform [0, 1]" in result.stdout
    assert "num_cuts: choice [4, 8, 16]" in result.stdout


def test_a_second_invocation_on_a_running_study_is_refused(
    tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    (tmp_path / "studies").mkdir()
    lock = StudyLock(env.optuna_url, "combo_alpha").acquire()
    try:
        code, _, stderr = env.run_here("--search", "combo_alpha", "--image-size", "32")
    finally:
        lock.release()
    assert code == 2
    assert "being run by another invocation" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_lock_is_released_with_its_holder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = StudyLock(url, "s").acquire()
    with pytest.raises(ConfigError, match="being run by another invocation"):
        StudyLock(url, "s").acquire()
    StudyLock(url, "other").acquire().release()  # another study is not blocked
    first.release()
    StudyLock(url, "s").acquire().release()


def test_a_study_is_bound_to_its_data(tmp_path: Path, phantom_dir: Path) -> None:
    import optuna

    env = StudyEnv(tmp_path, phantom_dir)
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(
        storage=env.optuna_url, study_name="combo_alpha", direction="maximize"
    )
    study.set_user_attr("search", "combo_alpha")
    study.set_user_attr("data_key", "another data set")
    code, _, stderr = env.run_here("--search", "combo_alpha", "--image-size", "32")
    assert code == 2
    assert "it was run on other data" in stderr
    code, _, stderr = env.run_here("--search", "family", "--study", "combo_alpha")
    assert code == 2 and "belongs to search 'combo_alpha'" in stderr


def test_resume_with_nothing_to_resume_exits_0(tmp_path: Path, phantom_dir: Path) -> None:
    code, stdout, stderr = StudyEnv(tmp_path, phantom_dir).run_here(
        "--search", "combo_alpha", "--resume"
    )
    assert code == 0, stderr
    assert "nothing to resume" in stdout
