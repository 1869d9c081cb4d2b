"""What a Ray Tune trial runs: one `flairseg.engine.train` call (`flairseg.cv.train_folds` when
the study is cross-validated) and one epoch callback.

The seam is narrow on purpose. The trial gets its full TrainConfig in
`config["flairseg"]` and the preprocessed data set through Ray's object store
(`tune.with_parameters`), so it reads no TIFF and needs no shared disk. Each epoch it
reports the DESIGN.md metrics with a checkpoint (the training state plus the
evolution of a few fixed val slices), which is how ASHA sees the epoch counter and
how an interrupted study resumes the trial where it stopped.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from flairseg.checkpoint import model_from_checkpoint
from flairseg.config import TrainConfig
from flairseg.cv import FoldsReport, train_folds
from flairseg.dataset import Dataset, Part
from flairseg.engine import (
    FAST,
    EpochReport,
    Speed,
    load_checkpoint,
    pick_device,
    predict_probs,
    train,
)
from flairseg.ensemble import Ensemble
from flairseg.errors import keep_private
from flairseg.evolution import (
    EVOLUTION_FILE,
    EVOLUTION_SLICES,
    STATE_FILE,
    Evolution,
    pick_slices,
    save_epoch,
)
from flairseg.folds import make_folds
from flairseg.patients import patient_scores
from study import diskfull, gpu_use, referee, settled
from study.referee import Rungs
from study.schema import Tag

KEPT_FROM = "kept_from"  # a confirmation's result: the search checkpoint it kept
PATIENTS_FILE = "patients.json"  # in a confirmation's last checkpoint: {patient: scores}
SLOW_TRIAL = "FLAIRSEG_TEST_SLOW_TRIAL"  # tests only: "N:SECONDS" slows trial N's every epoch


def run_trial(
    config: dict[str, Any],
    data: Dataset,
    ended: dict[int, str] | None = None,
    experiment_path: str = "",
    **options: Any,
) -> None:
    """The Tune function trainable (kept in the installed package so workers can import it):
    `train_trial` with `options`. `ended`: on --resume, the trials Optuna holds ended
    (study.settled); such a trial, restored by Tune from a state saved before its end,
    reports its newest checkpoint in `experiment_path` again instead of training."""
    keep_private()  # what this worker writes (patient-derived) is not readable by others
    number = int(config.get("optuna_trial", -1))
    if ended and number in ended:
        epochs = int(config["flairseg"]["epochs"])
        return settled.replay(number, ended[number], experiment_path, epochs)
    if experiment_path and tune.get_checkpoint() is None and "resume_from" not in config:
        # restored by Tune without the checkpoint it wrote last (Tune saves its state every
        # few seconds; a pause can come in between): the newest whole one on disk
        found = settled.latest_checkpoint(experiment_path, number)
        config = {**config, "resume_from": found} if found else config
    return train_trial(config, data, **options)


def train_trial(
    config: dict[str, Any],
    data: Dataset,
    threads: int = 1,
    speed: Speed = FAST,
    folds: int | None = None,
    rungs: Rungs | None = None,
    patients: bool = False,
) -> None:
    """One trial's training, reported epoch by epoch to Tune.

    `threads`: torch's intra-op threads, the CPUs Ray gave the trial, so trials side by
    side do not oversubscribe the machine. `speed`: the engine's fast path and compile flag.
    `folds`: K trains the config's K fold models in lockstep (flairseg.cv) and reports
    their mean under the usual keys, the spread and each fold beside it; the evolution
    pictures then follow fold 1 on its val slices. `rungs`: ASHA's decisions come from
    the invocation's referee (study.referee): at each rung the trial asks, and waits.
    `patients`: the last epoch's checkpoint also holds each val patient's scores
    (PATIENTS_FILE; cross-validated: each patient by its own fold's model), for the
    confirmation stage's paired comparison (study.confirm).
    """
    torch.set_num_threads(max(1, int(threads)))
    keep_private()  # checkpoints stay private, whatever umask `ray start` gave the worker
    train_config = TrainConfig.from_dict(config["flairseg"])
    fold_data = make_folds(data, folds, train_config.split_seed) if folds else None
    evolution, evolution_inputs = _evolution_of(fold_data[1][0].val if fold_data else data.val)
    resume, evolution = _resumed(config, evolution)
    # after a resume, the first report carries the epochs before it (see callbacks)
    backfill = {"resumed_history": json.dumps(resume["history"])} if resume else {}
    gpu_use.watch(pick_device())  # its GPU's utilisation, where NVML is there
    number = int(config.get("optuna_trial", -1))
    if resume and rungs is not None and stopped_on_resume(rungs, number, resume, train_config):
        return
    slow, measured = _slowdown(number), {}  # measured: what `_costs` times once

    def on_epoch(report: EpochReport | FoldsReport) -> bool:
        time.sleep(slow)
        how = _measures(report, evolution_inputs, measured)
        # a checkpoint the disk has no room for pauses the study (study.diskfull)
        with (
            diskfull.checkpointing(_trial_folder()),
            tempfile.TemporaryDirectory(prefix="flairseg-ckpt-") as folder,
        ):
            save_epoch(report, evolution, evolution_inputs, folder)
            if patients and report.epoch >= train_config.epochs:
                vals = [d.val for d in fold_data[1]] if fold_data else [data.val]
                save_patients(folder, scores_by_patient(report, vals))
            diskfull.measured(folder)
            tune.report(
                {**report.metrics, "planned_epochs": train_config.epochs, **backfill, **how},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )
        backfill.clear()
        return rungs is not None and asha_stops(rungs, number, report, train_config.epochs)

    if fold_data is None:
        train(train_config, data, on_epoch=on_epoch, resume=resume, speed=speed)
    else:
        plan, datasets = fold_data
        train_folds(train_config, plan, datasets, on_epoch=on_epoch, resume=resume, speed=speed)


def _evolution_of(val: Part) -> tuple[Evolution, torch.Tensor]:
    """The evolution pictures' record and their input slices, chosen from `val`."""
    index = pick_slices(val, EVOLUTION_SLICES)
    inputs, _ = val.batch(torch.tensor(index))
    return Evolution.of(val, index), inputs


def _throughput(report: EpochReport | FoldsReport) -> dict[str, Any]:
    """The epoch's training images per second (all folds together), peak memory (on a GPU
    the epoch's device memory; on a CPU the worker process's peak RSS so far) and the
    device's name."""
    states = report.state.folds if isinstance(report, FoldsReport) else [report.state]
    done = [s.trained for s in states if s.trained]
    device = pick_device()
    if device.type == "cuda":  # this epoch's peak: the next epoch measures its own
        peak, name = torch.cuda.max_memory_allocated(device), torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:  # the worker process's peak so far (the kernel keeps no other)
        peak, name = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu"
    out: dict[str, Any] = {"peak_memory_mb": peak / 2**20, Tag.DEVICE: name}
    out |= gpu_use.since_last(device)  # the epoch's mean GPU utilisation (study.gpu_use)
    if done and sum(t for _, t in done) > 0:
        out["images_per_s"] = sum(n for n, _ in done) / sum(t for _, t in done)
    return out


def _measures(
    report: EpochReport | FoldsReport, images: torch.Tensor, measured: dict[str, float]
) -> dict[str, Any]:
    """What a trial reports of how it trained beside its metrics: fused or not, its
    throughput and memory, what it cost so far."""
    return _folds_trained(report) | _throughput(report) | _costs(report, images, measured)


def _costs(
    report: EpochReport | FoldsReport, images: torch.Tensor, measured: dict[str, float]
) -> dict[str, float]:
    """What the trial cost so far (study.front): model_epochs (epochs x its models), and,
    measured at its first epoch, one model's parameters and its inference milliseconds
    per slice (the median of 3 timed forward passes over `images`, after one to warm up,
    on the trial's device and precision)."""
    one = report.folds[0] if isinstance(report, FoldsReport) else report
    models = len(report.folds) if isinstance(report, FoldsReport) else 1
    if not measured:
        measured["parameters"] = float(sum(p.numel() for p in one.state.model.parameters()))
        one.predict(images)  # warm-up: the first pass pays for allocations
        times = []
        for _ in range(3):
            started = time.perf_counter()
            one.predict(images)  # returns on the CPU: the device is done
            times.append(time.perf_counter() - started)
        measured["inference_ms"] = 1000 * sorted(times)[1] / max(len(images), 1)
    return {"model_epochs": float(report.epoch * models), **measured}


def _folds_trained(report: EpochReport | FoldsReport) -> dict[str, str]:
    """A cross-validated trial says how its fold models trained (flairseg.fused)."""
    if not isinstance(report, FoldsReport):
        return {}
    return {Tag.FOLDS_TRAINED: "fused" if report.state.fused else "one by one"}


def _trial_folder() -> str:
    """Where this trial's checkpoints go (Tune's storage, a DeveloperAPI; else its
    working folder)."""
    context = tune.get_context()
    try:
        return str(context.get_storage().trial_fs_path)
    except Exception:  # an API Ray may move: the folder is only named in a message
        return context.get_trial_dir()


def _resumed(
    config: dict[str, Any], evolution: Evolution
) -> tuple[dict[str, Any] | None, Evolution]:
    """The checkpoint a resumed trial goes on from (None: it starts afresh) and the
    evolution pictures it had saved so far."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        # an orphan of a killed driver, adopted on --resume (see study.searcher)
        checkpoint = tune.Checkpoint(config["resume_from"])
    if checkpoint is None:
        return None, evolution
    with checkpoint.as_directory() as folder:
        resume = load_checkpoint(Path(folder) / STATE_FILE)
        saved = Path(folder) / EVOLUTION_FILE
        if saved.exists():
            evolution = Evolution.load(saved)
    return resume, evolution


def run_confirmation(
    config: dict[str, Any],
    data: Dataset,
    cases: list[dict[str, Any]],
    threads: int = 1,
    speed: Speed = FAST,
    folds: int | None = None,
) -> None:
    """A confirmation trial (study.confirm): case `config["case"]` trained to its full
    budget, no early stopping, its val patients scored in its last checkpoint."""
    keep_private()
    case = cases[int(config["case"])]
    if case.get("kept") and report_kept(case, Path(case["kept"]), data, speed, folds):
        return  # its search trial stands for it: what training it again would repeat
    train_trial(case, data, threads=threads, speed=speed, folds=folds, patients=True)


def report_kept(
    case: dict[str, Any], kept: Path, data: Dataset, speed: Speed, folds: int | None
) -> bool:
    """A finalist's search trial ran this case's full budget (same config, seed, folds):
    its last checkpoint is reported as the confirmation's, with each val patient's scores
    (each fold's model on its own val patients) added, as a retrained case would have, and
    `kept_from` naming it. False (nothing reported: the case trains) where this worker
    cannot read it or it holds another config or fewer epochs."""
    if not (kept / STATE_FILE).exists():
        return False
    ckpt = load_checkpoint(kept / STATE_FILE)
    trained, model = model_from_checkpoint(ckpt)
    config = TrainConfig.from_dict(case["flairseg"])
    if trained.to_dict() != config.to_dict() or int(ckpt.get("epoch", 0)) < config.epochs:
        return False
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    vals = [d.val for d in make_folds(data, folds, config.split_seed)[1]] if folds else [data.val]
    device = pick_device()
    scores: dict[str, dict[str, float]] = {}
    for member, val in zip(members, vals, strict=True):
        member.to(device)

        def predict(x: torch.Tensor, m: torch.nn.Module = member) -> torch.Tensor:
            return predict_probs(m, x.to(device), amp=speed.fast).cpu()

        scores.update(patient_scores(predict, val))
    with tempfile.TemporaryDirectory(prefix="flairseg-ckpt-") as folder:
        shutil.copytree(kept, folder, dirs_exist_ok=True)
        save_patients(folder, scores)
        tune.report(
            {**ckpt["history"][-1], "planned_epochs": config.epochs, KEPT_FROM: str(kept)},
            checkpoint=tune.Checkpoint.from_directory(folder),
        )
    return True


def stopped_on_resume(
    rungs: Rungs, number: int, resume: dict[str, Any], config: TrainConfig
) -> bool:
    """A trial resumed from its checkpoint tells the referee its rung values again, and
    learns the decision it may have been waiting for when its driver stopped."""
    values = {int(m["epoch"]): float(m[rungs.metric]) for m in resume.get("history", [])}
    referee.record(rungs.referee, number, values)
    epoch = int(resume.get("epoch", 0))
    if epoch in rungs.epochs and epoch < config.epochs and epoch in values:
        return referee.ask(rungs.referee, number, epoch, values[epoch])
    return False


def _slowdown(number: int) -> float:
    """Seconds to sleep before each epoch's report: a test slows one trial on purpose to
    show that timing changes no decision (`SLOW_TRIAL`); 0 otherwise."""
    trial, _, seconds = os.environ.get(SLOW_TRIAL, "").partition(":")
    if trial.strip().isdigit() and int(trial) == number:
        return float(seconds or 0)
    return 0.0


def asha_stops(rungs: Rungs, number: int, report: Any, planned: int) -> bool:
    """At a rung before its last epoch, whether the referee stops the trial (it waits)."""
    if report.epoch not in rungs.epochs or report.epoch >= planned:
        return False
    value = float(report.metrics[rungs.metric])
    return referee.ask(rungs.referee, number, report.epoch, value)


def save_patients(folder: str, scores: dict[str, dict[str, float]]) -> None:
    (Path(folder) / PATIENTS_FILE).write_text(json.dumps(scores, sort_keys=True))


def scores_by_patient(
    report: EpochReport | FoldsReport, vals: list[Part]
) -> dict[str, dict[str, float]]:
    """Each val patient's scores; with folds, fold k's model on fold k's val patients."""
    models = report.folds if isinstance(report, FoldsReport) else [report]
    scores: dict[str, dict[str, float]] = {}
    for model, val in zip(models, vals, strict=True):
        scores.update(patient_scores(model.predict, val))
    return scores
