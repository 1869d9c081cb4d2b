"""Run a hyperparameter study: `python -m study.run --search combo_alpha`.

The entry point only; the flow lives in `study.cli` (flags, `main`) -> `study.plan` ->
`study.invocation` -> `study.tuner` -> `study.results` -> `study.console`.
"""

from __future__ import annotations

from flairseg.errors import run_cli
from study.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    run_cli(main, hard_exit_on_interrupt=True)  # Ray may be half-started
