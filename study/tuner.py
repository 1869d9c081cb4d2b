"""Ray and Tune: start Ray, share the GPUs out, build the Tuner, run it.

Optuna (TPE, seeded) proposes through `StudySearch`, ASHA stops on the epoch counter,
Tune places the trials. Ray, Tune and Optuna are imported inside the functions: a
`--list` or a bad flag must not pay for them, or start Ray.

Ctrl+C stops the driver at any moment (`latched_interrupts`): where Python swallows the
KeyboardInterrupt (Ray forking its processes) or Tune keeps a handler of its own after
its run, the signal is remembered and acted on at the next check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flairseg.dataset import Dataset
from flairseg.engine import FAST, Speed
from flairseg.errors import ConfigError
from study import search as searches
from study import stops

WORKER_NICENESS = "RAY_worker_niceness"  # Ray's setting for the niceness of its workers


@dataclass(frozen=True)
class TuneJob:
    """What one Tune run is built from."""

    search: searches.Search
    data: Dataset  # handed to every trial through the object store
    study_name: str  # the Optuna study the searcher asks
    storage: Any  # its Optuna storage
    path: str  # the invocation's Tune folder or URI (STUDY/run-N)
    callbacks: list  # the driver's Tune callbacks (study.callbacks: MLflow runs, progress lines)
    trials: int
    seed: int  # the sampler's seed
    resume: bool  # restore the Tune state at `path` instead of starting afresh
    speed: Speed = FAST
    first_trial: int = 0  # the invocation's first Optuna trial number
    study_seed: int = 0  # the seed the study was started with: ordered proposals derive theirs

    @property
    def ordered(self) -> bool:
        """Decisions follow the trials' order (study.ordered, study.referee), not arrival."""
        return self.search.decisions == "fixed"

    @property
    def referee(self) -> str | None:
        """The referee actor's name when ASHA decides in the trials' order."""
        if not self.ordered or not self.search.asha.enabled:
            return None
        from study.referee import actor_name

        return actor_name(self.path)


_SIGINTS: list[float] = []  # when this driver got a Ctrl+C, while `latched_interrupts` holds


@contextlib.contextmanager
def latched_interrupts() -> Iterator[None]:
    """Ctrl+C raises KeyboardInterrupt as ever and is also remembered, for
    `check_interrupted`. Python swallows an exception raised where it cannot propagate
    ("Exception ignored in ..."), and that is where a Ctrl+C lands while Ray starts: Ray
    forks its processes with a preexec_fn, so after each fork the driver runs the at-fork
    hooks (logging's lock release), and a signal that came during the fork is handled in
    them. Left alone where SIGINT is ignored (a background job) or has another handler."""
    mine = threading.current_thread() is threading.main_thread()
    if not mine or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _SIGINTS.clear()
    signal.signal(signal.SIGINT, _remember_sigint)
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: _unless_interrupt(unraisable, hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = hook
        _SIGINTS.clear()


def _remember_sigint(signum: int, frame: Any) -> None:
    _SIGINTS.append(time.monotonic())
    raise KeyboardInterrupt


def _unless_interrupt(unraisable: Any, hook: Callable[[Any], None]) -> None:
    """A swallowed KeyboardInterrupt is remembered, not printed as a traceback."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        hook(unraisable)


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl+C (or SIGTERM, SIGHUP) came, even one swallowed."""
    if _SIGINTS or stops.interrupted():
        raise KeyboardInterrupt


def start_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start a fresh Ray on this machine."""
    import ray

    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    # without --address: always a fresh Ray on this machine ("local"); a bare ray.init() would
    # join any cluster a `ray start` left running here, and its busy or dying nodes with it
    kwargs["address"] = address or "local"
    where = f"joining the Ray cluster at {address}" if address else "starting Ray on this machine"
    print(f"{where} ...", flush=True)
    if address is None:
        # Ray runs its workers, so every trial, at niceness 15 by default: on a machine busy
        # with anything else they got ~3% of a core each and a study crawled (measured: 22 min
        # for 2 of 12 trials). 0: trials run at the driver's own niceness, so `nice -n 15
        # python -m study.run` still makes the whole study yield; a value already set wins
        os.environ.setdefault(WORKER_NICENESS, "0")
        try:
            ray.init(**kwargs)
            stops.install()  # ray.init put in its own SIGTERM handler
            _keep_token_private()
            check_interrupted()  # a Ctrl+C while Ray forked its processes was swallowed there
        except KeyboardInterrupt:
            # end a Ray that a Ctrl+C caught half-started now: left to the exit handlers,
            # its teardown at times crashed the interpreter (SIGSEGV instead of exit 130)
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise
        return
    with _held_stderr() as ray_log:
        try:
            ray.init(**kwargs)
        except Exception as err:  # ConnectionError and friends, worded by Ray
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            why = _auth_hint(ray_log()) or f"cannot join the Ray cluster ({first[:200]})"
            raise ConfigError(f"--address {address}: {why}") from None
    stops.install()
    check_interrupted()


@contextlib.contextmanager
def _held_stderr() -> Iterator[Callable[[], str]]:
    """Ray's C++ client logs each refused attempt to join on file descriptor 2 (twenty
    lines for a missing token): hold them in a file while it tries. Shown as they were
    when it joins; the caller reads them (the callable) for the cause when it does not."""
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+", errors="replace") as held:

        def text() -> str:
            held.seek(0)  # Ray wrote through descriptor 2, which shares the file's offset
            return held.read()

        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield text
        except BaseException:
            os.dup2(saved, 2)
            raise
        else:
            os.dup2(saved, 2)
            sys.stderr.write(text())
        finally:
            os.close(saved)


def _auth_hint(ray_log: str) -> str | None:
    """The line to show when the cluster refused this driver's token (or its lack)."""
    if "InvalidAuthToken" not in ray_log and "AuthenticationError" not in ray_log:
        return None
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (
            "the Ray cluster wants a token: set RAY_AUTH_MODE=token and its token in "
            "RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH)"
        )
    return "the Ray cluster refused this token: is RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) its own?"


def _keep_token_private() -> None:
    """Ray's own token for a local cluster (`~/.ray/auth_token`, written at the first
    `ray.init()` with the process's umask, 0644 by default) guards a Ray that listens on
    the network card: only its owner may read it."""
    token = Path.home() / ".ray" / "auth_token"
    with contextlib.suppress(OSError):
        if token.stat().st_mode & 0o077:
            token.chmod(0o600)


def gpus_per_trial(search: searches.Search) -> float:
    """The search's GPUs per trial; `auto` is one when the cluster has a GPU, else none."""
    if search.gpus != "auto":
        return float(search.gpus)
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def pack_gpus(search: searches.Search) -> searches.Search:
    """With a fraction of a GPU per trial, run as many at once as the cluster's GPUs hold.

    `--gpus-per-trial 0.25` on one GPU means four trials side by side; the search's
    concurrency would otherwise cap them (an explicit --concurrency still wins).
    """
    gpus = gpus_per_trial(search)
    if not 0 < gpus < 1:
        return search
    import ray

    fits = int(ray.cluster_resources().get("GPU", 0) / gpus + 1e-9)
    if fits <= search.concurrency:
        return search
    return dataclasses.replace(search, concurrency=fits)


def scoring_device(gpus: float) -> torch.device:
    """The device a trial trains on, for the driver's scores: CUDA when trials get `gpus`
    and this process sees one, else the CPU."""
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def make_tuner(job: TuneJob) -> tuple[Any, float]:
    """The Tuner for `job` (restored from its folder on a resume) and the GPUs per trial."""
    from ray import tune

    from study.searcher import BudgetStopper, make_searcher

    gpus = gpus_per_trial(job.search)
    if job.referee is not None:  # ASHA in the trials' order: the invocation's referee
        from study import referee

        referee.start(job, resume_first=job.first_trial if job.resume else None)
    trainable = _trainable(job, gpus)
    if job.resume:
        return tune.Tuner.restore(job.path, trainable=trainable, resume_unfinished=True), gpus
    search = job.search
    storage_path, name = job.path.rsplit("/", 1)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            search_alg=make_searcher(job),
            scheduler=_scheduler(search),
            num_samples=job.trials,
            max_concurrent_trials=search.concurrency,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=job.callbacks,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=0),
            stop=BudgetStopper(),  # a time budget's end (study.budget); none: never
        ),
    )
    return tuner, gpus


def _trainable(job: TuneJob, gpus: float) -> Any:
    """The trial function with the data bound and its CPU/GPU share declared."""
    from ray import tune

    from study import settled
    from study.referee import Rungs, milestones
    from study.trainable import run_trial

    search = job.search
    rungs = None
    if job.referee is not None:
        asha = search.asha
        every = milestones(asha.max_epochs, asha.grace_period, asha.reduction_factor)
        rungs = Rungs(job.referee, search.metric, tuple(every))
    return tune.with_resources(
        tune.with_parameters(
            run_trial,
            data=job.data,
            threads=max(1, int(search.cpus)),
            speed=job.speed,
            folds=search.folds,
            rungs=rungs,
            ended=settled.ended(job.study_name, job.storage, job.first_trial)
            if job.resume
            else None,
            experiment_path=job.path,
        ),
        {"cpu": search.cpus, "gpu": gpus},
    )


def _tpe(*args: Any, **kwargs: Any) -> Any:
    """study.searcher.tpe under the name that invocations started before it moved pickled
    (their Tune state holds `partial(study.tuner._tpe, ...)`): their --resume still loads."""
    from study.searcher import tpe

    return tpe(*args, **kwargs)


def _scheduler(search: searches.Search) -> Any:
    """ASHA on the epoch counter, or first-in-first-out when the search turns it off or the
    referee takes ASHA's decisions in the trials' order (study.referee)."""
    from ray.tune.schedulers import FIFOScheduler

    from study.referee import asha_scheduler

    if not search.asha.enabled or search.decisions == "fixed":
        return FIFOScheduler()
    asha = search.asha
    return asha_scheduler(asha.max_epochs, asha.grace_period, asha.reduction_factor)


def trial_dirname(trial: Any) -> str:
    """`trial-0003-<ray id>` instead of Ray's name built from every config value."""
    return f"trial-{int(trial.config['optuna_trial']):04d}-{trial.trial_id}"


def fit(tuner: Any) -> tuple[float, bool]:
    """Run the trials: the seconds it took, and whether a Ctrl+C stopped them (Tune catches
    it, saves its state and returns early)."""
    started = time.monotonic()
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    ours = signal.getsignal(signal.SIGINT)
    stopped = False
    try:
        tuner.fit()
    except KeyboardInterrupt:  # before Tune's handler was in place, or a second Ctrl+C
        stopped = True
    finally:
        # Tune puts back the handler it replaced only when a SIGINT came; otherwise its
        # handler stays, and would swallow the next Ctrl+C (test scores, the report)
        tune_caught = signal.getsignal(signal.SIGINT) is ours and _tune_catches_sigint()
        if ours is not None:
            signal.signal(signal.SIGINT, ours)
    stopped = stopped or tune_caught or bool(_SIGINTS) or stops.interrupted()
    return time.monotonic() - started, stopped


def _tune_catches_sigint() -> bool:
    """Whether Tune's run installs its SIGINT handler (on the main thread, unless disabled)."""
    main = threading.current_thread() is threading.main_thread()
    return main and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0)
