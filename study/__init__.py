"""Ray Tune + Optuna + ASHA + MLflow around flairseg: `python -m study.run`.

The modules come in four parts, in the order a study builds on them; a part imports only
from itself and the parts before it (tests/test_layers.py holds that, and that every
module is in one part). The folder stays flat on purpose: Tune pickles the searcher, the
sampler and the callbacks of an invocation by their module's name, so a module that
moved would break `--resume` of every invocation started before (see tests/test_compat.py).

- **base**, what every part shares: the MLflow names (`schema`), passwords kept out of
  output (`secrets`), private attributes of Optuna and Ray (`adapters`), the commands a
  study prints (`commands`), signals (`stops`), the machine on record (`environment`,
  `gpu_use`), the time budget (`budget`).
- **tracking**, what a study records and reads back: Optuna's study and the invocations'
  ledger (`ledger`, `settled`), MLflow's runs (`tracking`, `outbox` while the server is
  away, `datasets`), the registry (`register`, `model_uri`) and the table (`export`).
- **search**, what a search file says and how it reaches an answer: the file (`search`,
  `search_checks`, `search_answer`, `space`), the proposals and stops (`searcher`, `ordered`,
  `referee`), the answer (`front`, `compare`, `importance`).
- **run**, one invocation from the flags to the summary: `run`/`cli`/`api` -> `plan` ->
  `invocation` (`leftovers` of the last one, `outputs` tried first) -> `tuner` with the
  trials (`trainable`, `diskfull`) and the driver's callbacks (`callbacks`, `trial_runs`,
  `progress`, `trial_names`) -> `confirm`/`confirming` -> `results` -> `console`,
  `notify`/`webhook`.
"""

PARTS = {
    "base": (
        "schema", "secrets", "adapters", "commands", "stops", "environment", "gpu_use", "budget",
    ),
    "tracking": ("ledger", "settled", "tracking", "outbox", "datasets", "register", "model_uri",
                 "export"),
    "search": (
        "space", "search_checks", "search_answer", "search", "searcher", "ordered", "referee",
        "front", "compare", "importance",
    ),
    "run": (
        "run", "cli", "api", "plan", "invocation", "leftovers", "outputs", "tuner", "trainable",
        "diskfull", "callbacks", "trial_runs", "progress", "trial_names", "confirm", "confirming",
        "results", "console", "notify", "webhook",
    ),
}  # fmt: skip
