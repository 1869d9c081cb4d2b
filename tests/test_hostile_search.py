"""Hostile search files: alias bombs, deep nesting, absurd budgets, huge values, huge files.

Each one is refused before Ray starts, fast and in bounded memory: exit status 2, one
short line on stderr, no traceback. The in-process checks pass `--data` a folder that
does not exist: were a check missing, the run would stop there instead of starting Ray.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest
from study_helpers import GOOD_SEARCH, StudyEnv

from flairseg.errors import ConfigError
from study import search as searches

GOOD = GOOD_SEARCH
GRID = """
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
grid:
  - {name: a, epochs: 2}
asha: {enabled: false, max_epochs: 4}
"""
LINE_LIMIT = 300  # characters in the one error line, besides the search file's path
MEMORY_LIMIT = 2 * 1024**3  # address space of the process refusing an alias bomb


def alias_bomb(levels: int) -> str:
    """`trials:` holding "billion laughs": each level nine aliases of the one below."""
    names = [chr(ord("a") + i) for i in range(levels)]
    rows = ["&a [x, x, x, x, x, x, x, x, x]"]
    rows += [f"&{names[i]} [{', '.join([f'*{names[i - 1]}'] * 9)}]" for i in range(1, levels)]
    return GOOD.replace("trials: 1", "trials: [" + ", ".join(rows) + "]")


def nested(depth: int) -> str:
    return GOOD.replace("trials: 1", "trials: " + "[" * depth + "]" * depth)


def one_line(code: int, stderr: str, culprit: str, path: Path | None = None) -> str:
    assert code == 2, stderr[:2000]
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[:2000]
    line = lines[0]
    assert line.startswith("error: "), line[:2000]
    size = len(line.replace(str(path), "")) if path else len(line)
    assert size < LINE_LIMIT, f"{size} characters: {line[:2000]}"
    assert culprit in line, line[:2000]
    return line


def check_here(tmp_path: Path, text: str | None, culprit: str, *args: str) -> str:
    """Run study.run in process on `text` (as --search) and ARGS: the one error line."""
    path = tmp_path / "hostile.yaml"
    if text is not None:
        path.write_text(text)
        args = ("--search", str(path), *args)
    env = StudyEnv(tmp_path, tmp_path / "no-data")
    code, _, stderr = env.run_here(*args)
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlflow.db").exists()
    return one_line(code, stderr, culprit, path)


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.parametrize("levels", [9, 5])
def test_an_alias_bomb_is_refused_in_bounded_memory(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels))
    assert path.stat().st_size < 2000
    env = StudyEnv(tmp_path, tmp_path / "no-data")
    result = subprocess.run(
        env.argv("--search", str(path)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,  # a safety net only: the refusal takes the start of Python
        env=env.env(),
        preexec_fn=limit_memory,
    )
    line = one_line(result.returncode, result.stderr, "alias", path)
    assert "line 6" in line  # where the first alias is
    assert not (tmp_path / "studies").exists()


def test_the_cli_refuses_absurd_trials_in_one_line(tmp_path: Path) -> None:
    """Through `python -m study.run`: the flag's bound holds before Ray starts."""
    env = StudyEnv(tmp_path, tmp_path / "no-data", fresh=True)
    result = env.run("--search", "combo_alpha", "--trials", "1000000000", timeout=600)
    line = one_line(result.returncode, result.stderr, "--trials 1000000000")
    assert str(searches.MAX_TRIALS) in line
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("depth", [21, 494, 5000])
def test_deep_nesting_is_refused(tmp_path: Path, depth: int) -> None:
    line = check_here(tmp_path, nested(depth), "deep")
    assert "line 6" in line


def test_deep_mappings_are_refused(tmp_path: Path) -> None:
    text = GOOD + "laptop: " + "{fixed: " * 494 + "{}" + "}" * 494 + "\n"
    check_here(tmp_path, text, "deep")


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(nested(searches.MAX_DEPTH - 1))  # the top mapping is the first level
    assert searches.read_yaml(path)["trials"] is not None


def test_any_alias_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("fixed: {", "fixed: &f {") + "laptop: {fixed: *f}\n"
    line = check_here(tmp_path, text, "alias")
    assert "line 8" in line


@pytest.mark.parametrize(
    ("extra", "key", "lines"),
    [
        ("trials: 5\n", "'trials'", "lines 6 and 8"),  # at the top, the last would win
        ("laptop:\n  fixed: {epochs: 2}\n  fixed: {epochs: 3}\n", "'fixed'", "lines 9 and 10"),
        ("laptop: {trials: 2, trials: 3}\n", "'trials'", "lines 8 and 8"),  # flow style
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(
    tmp_path: Path, extra: str, key: str, lines: str
) -> None:
    line = check_here(tmp_path, GOOD + extra, key)
    assert f"key {key} given twice ({lines})" in line, line


def test_the_same_key_in_two_mappings_is_no_repeat(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(GOOD + "laptop: {trials: 1, asha: {max_epochs: 1}}\n")
    assert searches.read_yaml(path)["laptop"]["trials"] == 1
    path.write_text(GOOD + "laptop: {<<: {trials: 2}, asha: {max_epochs: 1}}\n")  # a merge
    assert searches.read_yaml(path)["laptop"]["trials"] == 2


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        (GOOD.replace("trials: 1", "trials: 1000000000"), "trials: 1000000000"),
        (GOOD.replace("trials: 1", "trials: 10001"), "trials: 10001"),
        (GOOD.replace("max_epochs: 1", "max_epochs: 1000000000"), "asha.max_epochs"),
        (
            GOOD.replace("max_epochs: 1", "max_epochs: 2, grace_period: 1000000000"),
            "asha.grace_period",
        ),
        (
            GOOD.replace("alpha: {uniform: [0.0, 1.0]}", "epochs: {int: [1, 1000000000]}"),
            "space.epochs",
        ),
        (
            GOOD.replace("alpha: {uniform: [0.0, 1.0]}", "epochs: {int: [1, 4]}")
            + "points: [{epochs: 1000000000}]\n",
            "points[0]: epochs",
        ),
        (GRID.replace("epochs: 2", "epochs: 1000000000"), "grid[0] ('a'): epochs"),
        (GRID.replace("epochs: 2", "epochs: many"), "grid[0] ('a'): epochs"),
        (GRID + "epoch_scale: 1.0e+308\n", "epoch_scale"),
        (GOOD + "laptop: {trials: 1000000000}\n", "trials"),
    ],
    ids=[
        "trials",
        "trials-just-over",
        "max-epochs",
        "grace-period",
        "space-epochs",
        "point-epochs",
        "grid-epochs",
        "grid-epochs-text",
        "epoch-scale",
        "laptop-trials",
    ],
)
def test_an_absurd_budget_is_refused(tmp_path: Path, text: str, culprit: str) -> None:
    args = ("--profile", "laptop") if "laptop:" in text else ()
    check_here(tmp_path, text, culprit, *args)


@pytest.mark.parametrize(
    ("flag", "culprit"),
    [
        ("--trials", "--trials 1000000000"),
        ("--max-epochs", "--max-epochs 1000000000"),
    ],
)
def test_an_absurd_budget_flag_is_refused(tmp_path: Path, flag: str, culprit: str) -> None:
    line = check_here(tmp_path, None, culprit, "--search", "combo_alpha", flag, "1000000000")
    assert "10000" in line


def test_the_largest_budget_is_accepted() -> None:
    limits = {"trials": searches.MAX_TRIALS, "max_epochs": searches.MAX_EPOCHS}
    s = searches.load("combo_alpha", "full", limits)
    assert (s.trials, s.asha.max_epochs) == (searches.MAX_TRIALS, searches.MAX_EPOCHS)


def test_check_budget_names_the_flag_or_the_key() -> None:
    searches.check_budget(None, None, searches.FLAGS)
    searches.check_budget(searches.MAX_TRIALS, searches.MAX_EPOCHS, searches.FLAGS)
    with pytest.raises(ConfigError, match=r"^--trials 10001: must be at most 10000"):
        searches.check_budget(searches.MAX_TRIALS + 1, None, searches.FLAGS)
    with pytest.raises(ConfigError, match=r"^--max-epochs 10001: must be at most 10000"):
        searches.check_budget(None, searches.MAX_EPOCHS + 1, searches.FLAGS)
    with pytest.raises(ConfigError, match=r"^x.yaml: asha.max_epochs: 0 must be"):
        searches.check_budget(None, 0, "x.yaml")
    with pytest.raises(ConfigError, match=r"^x.yaml: trials: 'ten' must be a whole number"):
        searches.check_budget("ten", None, "x.yaml")


HUGE = "A" * 100_000


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        (GOOD.replace("model: unet", f'model: "{HUGE}"'), "fixed"),
        (GOOD + f"? {'k' * 10_000}\n: 1\n", "unknown key 'kkkk"),  # explicit: a long key
        (GOOD.replace("trials: 1", f"trials: {HUGE}"), "trials: 'AAAA"),
        (
            GOOD.replace("  alpha: {uniform", f"  ? {'a' * 10_000}\n  : {{uniform"),
            "unknown setting 'aaa",
        ),
        (GOOD.replace("[0.0, 1.0]", f"[0, {'9' * 4000}]"), "space.alpha"),
        (GOOD.replace("[0.0, 1.0]", f"[{'9' * 4000}, 1]"), "space.alpha"),
        (GOOD.replace("[0.0, 1.0]", "[0.0, 1.0], when: {loss: " + HUGE + "}"), "space.alpha"),
        (GOOD.replace("uniform: [0.0, 1.0]", f"choice: [{HUGE}]"), "space.alpha"),
        (GOOD + f"objective: {{metric: {HUGE}}}\n", "objective.metric"),
        (GOOD + f"points:\n  - alpha: 0.5\n    ? {HUGE}\n    : 1\n", "points[0]"),
        (GRID.replace("name: a, epochs: 2", f"name: {HUGE}, epochs: 0"), "grid[0] ('AAAA"),
        (GRID.replace("name: a, epochs: 2", 'name: "a\\nb", epochs: 0'), "grid[0] ('a\\nb')"),
        (GOOD + f"sampler: {{startup_trials: [{', '.join(['1'] * 20_000)}]}}\n", "sampler"),
        (GOOD.replace("[0.0, 1.0]}", "[0.0, 1.0], when: {model: [1]}}"), "space.alpha"),
        (GOOD.replace("loss: combo", f"loss: combo, lr: {'9' * 400}"), "fixed: lr=99"),
        (GOOD + f"description2: !{HUGE} 1\n", "not valid YAML"),
        (GOOD.replace("trials: 1", f"trials: {'1' * 5000}"), "not valid YAML"),
        (GOOD.replace("description: test", "description: 2020-13-45"), "not valid YAML"),
    ],
    ids=[
        "model",
        "unknown-key",
        "trials",
        "unknown-setting",
        "range-huge-int",
        "range-huge-low",
        "when-value",
        "choice-value",
        "metric",
        "point-key",
        "grid-name",
        "grid-name-newline",
        "long-list",
        "when-model-a-list",
        "float-too-large",
        "long-tag",
        "int-of-5000-digits",
        "bad-date",
    ],
)
def test_an_echoed_value_is_cut_to_an_excerpt(tmp_path: Path, text: str, culprit: str) -> None:
    check_here(tmp_path, text, culprit)


def test_a_file_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    text = GOOD + "# " + "x" * 2 * 1024**2 + "\n"
    line = check_here(tmp_path, text, "larger than")
    assert "1 MiB" in line


def test_a_file_just_under_the_size_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(GOOD + "#" * (searches.MAX_FILE_BYTES - len(GOOD) - 1) + "\n")
    assert path.stat().st_size == searches.MAX_FILE_BYTES
    assert searches.load(str(path)).trials == 1


def test_excerpt_is_short_and_marks_the_cut() -> None:
    assert searches.excerpt("short") == "'short'"
    assert searches.excerpt(7) == "7"
    for value in (HUGE, list(range(10_000)), {str(i): i for i in range(1000)}, 10**4000):
        text = searches.excerpt(value)
        assert len(text) <= searches.EXCERPT_CHARS and "..." in text


@pytest.mark.parametrize("name", searches.available())
def test_shipped_searches_use_no_alias_and_fit_the_bounds(name: str) -> None:
    raw = searches.read_yaml(searches.resolve(name))
    for profile in ("full", "laptop"):
        s = searches.parse(raw, name, profile=profile)
        assert s.trials <= searches.MAX_TRIALS and s.asha.max_epochs <= searches.MAX_EPOCHS
    assert os.path.getsize(searches.resolve(name)) < searches.MAX_FILE_BYTES
