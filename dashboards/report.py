"""The study report: `python -m dashboards.report --experiment NAME [--study NAME] [--out report.html]`.

It reads the runs from MLflow (a SQLite store or a server; it imports no training code)
and writes one HTML file that opens offline: plotly.js embedded once, pictures embedded
as PNG data. Sections, each a Plotly figure:

1. the answer, finalists confirmed and compared (dashboards.answer, from the parent run's
   comparison.json): each finalist's per-patient volume Dice, and the winner minus each
   runner-up in volume Dice and IoU with its 95 % CI, verdict and p; the title names the
   winner and its verdict against the runner-up. A study run with `--no-confirm` says its
   answer is unconfirmed; one without the artifact says it has none;
2. the family compared: IoU, Dice, pixel accuracy, mean accuracy of every trial, grouped
   by model and loss, the best of each group marked;
3. the best trial of each group: its config and its val and test scores;
4. the objective against each sampled hyperparameter, all trials in parallel
   coordinates, and what mattered: each hyperparameter's importance for the objective and
   for the cost (epochs reached), or why the study has none (dashboards.importance);
5. learning curves, with the epochs where ASHA stopped trials and the compute saved;
6. probability-mask overlays of each group's best model on the same val slices;
7. the training region evolution of the best trial, a slider over epochs;
8. the study's facts: data, fingerprint, split, image size, trials by status, wall time,
   the command that reproduces it, and what registering its best model did.

In a cross-validated study (`study.run --folds K`) every score is the fold mean and
shows its spread: error bars of ± 1 sd over the folds on each trial and group best, a
band around each learning curve, `mean ± sd` in the table (test: the fold models'
ensemble and one model's mean ± sd), and the facts say how it was validated.

A figure with nothing to show says why instead of being empty. Without `--study` the
report covers the experiment's most recent study.

This module is the command line. The work is done in order by `dashboards.load` (one read
of MLflow through `study.schema`), `dashboards.figures` (with `dashboards.spread` for a
cross-validated study's spread), `dashboards.answer`, `dashboards.importance` and
`dashboards.pictures` (the figures, from loaded data only), then `dashboards.page` (the
HTML); none imports torch.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dashboards.page import write
from flairseg.errors import ArgumentParser, ConfigError, run_cli
from study.schema import Artifact, client, default_uri


def build_parser() -> ArgumentParser:
    """The command line's flags (the documentation's CLI reference is made from it)."""
    parser = ArgumentParser(prog="python -m dashboards.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment", required=True, help="the MLflow experiment (a search's name)"
    )
    parser.add_argument(
        "--mlflow-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db"
    )
    parser.add_argument("--study", help="default: the experiment's most recent study")
    parser.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    parser.add_argument(
        "--log-to-run", help="also log the report as an artifact of this MLflow run"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dashboards.report`: write the report; bad input exits 2 in one line."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a folder; give a file name")
    uri = args.mlflow_uri or default_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--mlflow-uri {uri}: no such MLflow database")
    path, data = write(uri, args.experiment, args.study, args.out)
    if args.log_to_run:
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / Artifact.REPORT  # the name the parent run shows
            copy.write_bytes(path.read_bytes())
            client(uri).log_artifact(args.log_to_run, str(copy))
    size = path.stat().st_size / 1e6
    study = html.unescape(data.study)  # held escaped for the page
    print(f"wrote {path} ({size:.1f} MB): study {study}, {len(data.trials)} trials")
    return 0


if __name__ == "__main__":
    run_cli(main, hard_exit=True)
