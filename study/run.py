"""Run a hyperparameter study: `python -m study.run --search combo_alpha`.

The entry point only; the flow lives in `study.cli` (flags, `main`) -> `study.plan` ->
`study.invocation` -> `study.tuner` -> `study.results` -> `study.console`.
"""

from __future__ import annotations

from flairseg.errors import run_cli
from study import stops
from study.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    # Ray may be half-started; SIGTERM and SIGHUP exit 143 and 129 (study.stops)
    run_cli(main, hard_exit_on_interrupt=True, interrupted_status=stops.exit_status, hard_exit=True)
