"""Trials that Optuna records as ended while the restored Tune state does not.

Ray saves its experiment state every few seconds; Optuna writes a trial's end at once.
After a driver is killed between the two, `--resume` restores a Tune trial as still
running whose Optuna trial has already ended (COMPLETE, PRUNED or FAIL). Training it
again would spend its epochs twice and ask Optuna to update an ended trial (an error).
Instead the driver passes the ended trials to the trainable (`ended`), and such a trial
reports once more what its newest checkpoint on disk holds (`report_again`), with no
training. Tune, MLflow and the referee then see the same end, and Optuna's record stands.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flairseg.evolution import STATE_FILE

FAILED = "FAIL"


def ended(study_name: str, storage: Any, first: int) -> dict[int, str]:
    """The invocation's trials (Optuna numbers from `first`) that Optuna holds ended: number
    -> state name (COMPLETE, PRUNED, FAIL)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    return {
        t.number: t.state.name
        for t in study.get_trials(deepcopy=False)
        if t.number >= first and t.state.is_finished()
    }


def latest_checkpoint(experiment_path: str, number: int) -> str | None:
    """The newest complete `checkpoint_*` folder of any trial folder of Optuna trial
    `number` (None: none, or the experiment lives at a remote URI)."""
    root = Path(experiment_path)
    if not root.is_dir():
        return None
    found = (p for d in root.glob(f"trial-{number:04d}-*") for p in d.glob("checkpoint_*"))
    complete = [p for p in found if (p / STATE_FILE).exists()]
    # by when it was written: a trial adopted on a resume numbers its checkpoints from 0
    # again in a folder of its own, so names do not order checkpoints across folders
    complete.sort(key=lambda p: ((p / STATE_FILE).stat().st_mtime_ns, p.name))
    # the newest that loads: one a full disk cut short is never read back as whole
    return next((str(p) for p in reversed(complete) if _loads(p / STATE_FILE)), None)


def _loads(path: Path) -> bool:
    """Whether the checkpoint whose state file is `path` reads back whole: the state, and
    every array and JSON file beside it (a cut copy may have cut any of them)."""
    import numpy as np

    from flairseg.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
        for other in path.parent.iterdir():
            if other.suffix == ".npz":
                with np.load(other) as arrays:
                    for name in arrays.files:
                        arrays[name]  # a cut zip fails its CRC or its directory here
            elif other.suffix == ".json":
                json.loads(other.read_text())
    except Exception:  # truncated: torch's, numpy's or json's reader refuses it
        return False
    return True


def replay(number: int, state: str, experiment_path: str, planned: int) -> None:
    """Inside the trial: end as Optuna says trial `number` ended, from its newest
    checkpoint; a trial that had failed fails again, saying so."""
    if state == FAILED:
        raise RuntimeError(
            f"trial #{number} had failed before the driver stopped (see its MLflow run)"
        )
    folder = latest_checkpoint(experiment_path, number)
    if folder is not None:
        report_again(folder, planned)
        return
    from ray import tune

    known = tune.get_checkpoint()  # a remote --storage: the newest Tune's state names
    if known is not None:
        with known.as_directory() as where:
            report_again(where, planned)


def report_again(folder: str, planned: int) -> None:
    """Report the last epoch a checkpoint holds, with a copy of that checkpoint (Tune may
    number its next checkpoint as the folder it reads from)."""
    from ray import tune

    from flairseg.engine import load_checkpoint

    history = load_checkpoint(Path(folder) / STATE_FILE).get("history") or []
    if not history:
        return
    with tempfile.TemporaryDirectory(prefix="flairseg-ckpt-") as copy:
        shutil.copytree(folder, copy, dirs_exist_ok=True)
        tune.report(  # with its epochs, whose MLflow writes the kill may have cut short
            {**history[-1], "planned_epochs": planned, "resumed_history": json.dumps(history)},
            checkpoint=tune.Checkpoint.from_directory(copy),
        )
