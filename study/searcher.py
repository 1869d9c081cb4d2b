"""Ray's OptunaSearch, made safe for a driver that was killed (SIGKILL, lost node, OOM).

Ray saves its experiment state every few seconds, while Optuna writes each `ask` to
its database at once. A driver killed in between leaves an Optuna trial RUNNING that
the restored Tune state does not know. On `--resume`, this searcher adopts such an
orphan instead of asking Optuna for a new trial: the orphan gets its own parameters
back, and the trial resumes from its last checkpoint on disk (found by the trial folder
name `trial-NNNN-*`), so the invocation runs what it planned and nothing more.

It also records each trial as the live view (`optuna-dashboard` on the study's storage)
shows it: every epoch's objective as an intermediate value at step = the epoch, and the
trial's end as COMPLETE (it ran its planned epochs), PRUNED (ASHA stopped it early: its
value is the last epoch's objective, and its user attribute `status` says `stopped at
epoch N`, as its MLflow tag does) or FAIL (it failed). The study's best still counts a
stopped trial with its last value (`ledger.best_trial`).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from study import adapters, budget, ordered, schema
from study.settled import latest_checkpoint

# Optuna warns and keeps the first value when a step comes twice (the last epoch, passed on
# again at the end; the epochs a trial adopted on --resume trains again)
_SAME_STEP = "The reported value is ignored because this"
_ENDED_BEFORE: dict[str, bool] = {}  # Tune trial id -> its Optuna trial had ended at start


class StudySearch(OptunaSearch):
    """`referee`: the name of the invocation's referee (study.referee) when decisions
    follow the trials' order; the sampler is then an `ordered.OrderedSampler`, and a
    proposal waits (None: Tune asks again) until the trials it may see have ended."""

    _cost: str | None = None  # the default of a searcher pickled before costs existed

    def __init__(
        self,
        *args: Any,
        experiment_path: str,
        referee: str | None = None,
        cost: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._experiment_path = experiment_path
        self._referee = referee
        self._cost = cost  # the search's cost (study.front), kept on each trial at its end
        self._waits = 0  # proposals answered "not yet"

    def suggest(self, trial_id: str) -> dict | None:
        resume_from = None
        trials = adapters.searcher_trials(self)
        if trial_id not in trials:
            orphan = self._orphan()
            if orphan is not None:
                trials[trial_id] = orphan
                resume_from = latest_checkpoint(self._experiment_path, orphan.number)
            elif not budget.may_start():  # one more trial would not fit in the time budget
                return Searcher.FINISHED
            elif not self._may_propose():
                self._waits += 1
                return None
        config = super().suggest(trial_id)
        if config is not None and resume_from is not None:
            config["resume_from"] = resume_from
        if config is not None and self._referee is not None:
            import ray

            from study import referee

            # before the trial starts: an earlier trial is always known to the referee
            ray.get(referee.handle_named(self._referee).register.remote(trials[trial_id].number))
        return config

    def _may_propose(self) -> bool:
        """In a fixed order, whether the next trial's view is complete (its trials ended)."""
        sampler = self._sampler
        if not isinstance(sampler, ordered.OrderedSampler) or sampler.fixed_only:
            return True
        if not sampler.waits:  # a view for the cost only: decisions as results arrive
            return True
        study = adapters.searcher_study(self)
        number, _ = ordered.next_number(study)
        return ordered.ready(study, number, sampler.first, sampler.lag)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The epoch's objective as an intermediate value, at step = the epoch (Tune's own
        iteration counter starts again at 1 in a trial adopted from a killed driver)."""
        if self._ended_before(trial_id):
            return  # restored by Tune, ended in Optuna: its record stands (study.settled)
        budget.saw_epoch(result.get("time_this_iter_s"))
        if "epoch" in result:
            result = {**result, TRAINING_ITERATION: result["epoch"]}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SAME_STEP, category=UserWarning)
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """COMPLETE, PRUNED for a trial ASHA stopped early, FAIL for one that failed."""
        done = trial_id in adapters.searcher_completed(self) or self._ended_before(trial_id)
        scored = isinstance(self.metric, str) and bool(result) and self.metric in result
        if error:
            result = None  # FAIL, whatever it scored before it failed
        elif scored and not done:
            # Tune keeps from the searcher the result its scheduler stopped the trial on
            self.on_trial_result(trial_id, result)
            spent = schema.costs(result).get(self._cost) if self._cost else None
            if spent is not None:  # what the sampler's two-objective view reads
                adapters.searcher_trials(self)[trial_id].set_user_attr(ordered.COST_ATTR, spent)
            epoch = stopped_at(result)
            if epoch is not None:
                trial = adapters.searcher_trials(self)[trial_id]
                trial.set_user_attr("status", end_status(epoch))
                result = None  # Ray's OptunaSearch tells a trial without a value PRUNED,
                # and Optuna gives a pruned trial its last intermediate value
        if not self._ended_before(trial_id):
            super().on_trial_complete(trial_id, result=result, error=error)
        if self._referee is not None and trial_id in adapters.searcher_trials(self):
            from study import referee

            number = adapters.searcher_trials(self)[trial_id].number
            study = adapters.searcher_study(self)
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            referee.handle_named(self._referee).ended.remote(
                number, dict(frozen.intermediate_values)
            )

    def _ended_before(self, trial_id: str) -> bool:
        """Whether Optuna already holds this trial ended though Tune runs it: a driver
        killed after Optuna's write and before Tune saved its state (study.settled)."""
        trial = adapters.searcher_trials(self).get(trial_id)
        if trial is None or trial_id in adapters.searcher_completed(self):
            return False
        # asked once per trial and driver process (not in the searcher's pickled state: a
        # resumed driver asks again): while it runs, only this searcher can end the trial
        if trial_id not in _ENDED_BEFORE:
            study = adapters.searcher_study(self)
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            _ENDED_BEFORE[trial_id] = frozen.state.is_finished()
        return _ENDED_BEFORE[trial_id]

    def _orphan(self):
        import optuna

        known = {t.number for t in adapters.searcher_trials(self).values()}
        study = adapters.searcher_study(self)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for frozen in running:
            if frozen.number not in known:
                return adapters.running_trial(study, frozen)
        return None


def end_status(epoch: int) -> str:
    """A trial stopped before its planned epochs: by the time budget, if it ended the
    running phase, else by ASHA."""
    if budget.cut():
        return schema.budget_status(epoch)
    return schema.stopped_status(epoch)


class BudgetStopper(Stopper):
    """Tune's stop for a time budget (study.budget): every running trial stops, at its last
    epoch's checkpoint, when the running phase's share of the budget is spent."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return budget.phase_over()


def stopped_at(result: dict) -> int | None:
    """The epoch a trial ended at, when that is before its planned epochs (ASHA stopped it:
    the rule study.trial_names.ending tags its MLflow run `stopped at epoch N` by); else None."""
    epoch = int(result.get("epoch", 0) or 0)
    planned = int(result.get("planned_epochs", 0) or 0)
    return epoch if epoch < planned else None


def make_searcher(job: Any) -> StudySearch:
    """Seeded TPE over the study's Optuna storage, so every invocation sees the earlier ones."""
    import optuna

    from study.ordered import OrderedSampler

    search = job.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # multivariate/group TPE are marked experimental; they are what conditional spaces need
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    conditional = any(d.model or d.when for d in search.dims)
    make = functools.partial(tpe, startup=search.startup_trials, conditional=conditional)
    sampler = make(job.seed)
    cost = search.cost.metric if search.cost else None
    if job.ordered or cost:  # a cost's two objectives are proposed from a view too
        sampler = OrderedSampler(
            # no constant liar: a view holds no running trial to lie about (and TPE would
            # write its lie to the view's storage, which does not hold the trial)
            functools.partial(make, liar=False),
            seed=job.study_seed,
            first=job.first_trial,
            lag=search.concurrency,
            fixed_only=bool(search.grid),
            cost=cost,
            waits=job.ordered,
        )
    return StudySearch(
        experiment_path=job.path,
        referee=job.referee,
        cost=cost,
        space=search,
        metric=search.metric,
        mode=search.mode,
        sampler=sampler,
        study_name=job.study_name,
        storage=job.storage,
    )


def tpe(seed: int, startup: int, conditional: bool, liar: bool = True) -> Any:
    """Seeded TPE; multivariate and grouped where the space has conditional branches."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=startup,
        multivariate=conditional,
        group=conditional,
        constant_liar=liar,
    )
