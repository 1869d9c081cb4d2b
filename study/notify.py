"""Word when an invocation ends: `--notify URL` posts one message, however it ends.

Once an invocation is opened (its parent run exists), its end is posted once to the URL of
`--notify` or `$FLAIRSEG_NOTIFY_URL` (the flag wins; an empty one sends nothing): finished,
no trial succeeded, budget spent, failed, interrupted (Ctrl+C, SIGTERM, SIGHUP, a full
disk) or MLflow away at the end. The body is JSON: the study, the invocation's number, the
outcome, the exit status, a one-line message, the best trial so far, where MLflow holds it,
the report's path, the host and the time; `--notify-format slack` sends `{"text": ...}`,
the same in lines, as Slack's incoming webhooks take it.

The URL is a secret as a whole (a webhook's token is its path): never printed, logged or
written; a line shows `scheme://host/…`, a command that needs it names its variable, a
`user:password@` in it goes as HTTP Basic auth. Only http(s) URLs with a host are taken.
A post waits at most 10 s in all (`$FLAIRSEG_NOTIFY_TIMEOUT_S` sets another bound) and
follows no redirect; one that fails (refused, an HTTP error, no answer, a name that does
not resolve) is one warning line: the exit status stays the study's (study.webhook posts,
with the standard library only).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flairseg.errors import ConfigError, FlairsegError
from study import secrets, stops
from study.webhook import post, shown

ENV = "FLAIRSEG_NOTIFY_URL"
TIMEOUT_ENV = "FLAIRSEG_NOTIFY_TIMEOUT_S"
TIMEOUT_S = 10.0


def add_flags(p: argparse.ArgumentParser) -> None:
    """--notify URL and --notify-format."""
    p.add_argument(
        "--notify",
        metavar="URL",
        help=f"post one message here when the invocation ends, however it ends (default: "
        f"${ENV}); a secret: never printed or logged",
    )
    p.add_argument(
        "--notify-format",
        choices=("json", "slack"),
        default="json",
        help='json (default): the whole message; slack: {"text": ...}, the same in lines',
    )


def from_args(args: argparse.Namespace) -> str | None:
    """The URL to post to (--notify, else $FLAIRSEG_NOTIFY_URL; empty: none), checked and
    taken as a secret (study.secrets); a bad one is a ConfigError naming where it came from."""
    flag = getattr(args, "notify", None)
    given = flag if flag is not None else os.environ.get(ENV)
    if not given:
        return None
    try:
        parts = urlsplit(given)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and given.isprintable()
        ok = ok and not any(c.isspace() for c in given) and parts.port != 0
    except ValueError:  # a bad port, a bad [IPv6]
        ok = False
    if not ok:
        where = "--notify" if flag is not None else f"${ENV}"
        raise ConfigError(f"{where} {shown(given)}: give an http(s):// URL with a host, no spaces")
    secrets.take_whole(given)  # masked from now on, in any line that would quote it
    timeout()
    return given


def timeout() -> float:
    """The bound on a post, in seconds: $FLAIRSEG_NOTIFY_TIMEOUT_S, else 10."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(value) if value else TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 600:
        raise ConfigError(f"${TIMEOUT_ENV} {value[:40]!r}: seconds, more than 0 and at most 600")
    return seconds


def around(opened: Any, run: Callable[[], int]) -> int:
    """`run()`'s exit status, once the invocation's end is posted (when it has a URL); an
    exception `run` raises is posted, then goes on up."""
    try:
        status = run()
    except BaseException as err:
        tell(opened, None, err)
        raise
    tell(opened, status, None)
    return status


def tell(opened: Any, status: int | None, err: BaseException | None) -> None:
    """Post the end (exit `status`, or the exception `err`); a failure is one warning line."""
    url = opened.plan.notify
    if not url:
        return
    try:
        why = post(url, body(compose(opened, status, err), opened.plan.notify_format), timeout())
    except KeyboardInterrupt:  # a second Ctrl+C cuts the post short, nothing more
        why = "interrupted"
    except Exception as bug:  # a message that cannot be made never fails the study
        why = secrets.first_line(bug)
    if why:
        print(f"warning: --notify: could not post to {shown(url)} ({why})", file=sys.stderr)


def ending(status: int | None, err: BaseException | None, caught: str | None) -> dict[str, Any]:
    """outcome and exit_status (and `by`, for an interruption) of an end: run_study's exit
    status or the exception it raised; `caught`: stops.caught()."""
    if err is not None and not isinstance(err, KeyboardInterrupt):
        return {"outcome": "failed", "exit_status": 2 if isinstance(err, FlairsegError) else 1}
    status = stops.exit_status() if err is not None else status
    if status in (0, 1) and budget_spent():
        return {"outcome": "budget spent", "exit_status": status}
    named = {0: "finished", 1: "no trial succeeded", 3: "mlflow away"}
    if status in named:
        return {"outcome": named[status], "exit_status": status}
    if status is not None and (status >= 128 or status == 75 or caught):
        by = caught.removeprefix("by ").strip("()") if caught else "Ctrl+C"
        return {"outcome": "interrupted", "by": by, "exit_status": status}
    return {"outcome": "failed", "exit_status": status}


def budget_spent() -> bool:
    """The time budget's hook: `study.budget.ended()`, False where it does not exist."""
    try:
        from study.budget import ended  # type: ignore[attr-defined]

        return bool(ended())
    except Exception:  # not there (yet: ImportError), or its word unread
        return False


def compose(opened: Any, status: int | None, err: BaseException | None) -> dict[str, Any]:
    """The message: what ended, how, the best trial so far, where to look."""
    from study.results import report_path

    plan, number = opened.plan, opened.record.number
    end = ending(status, err, stops.caught())
    said = {
        "finished": "finished",
        "no trial succeeded": "ended: no trial succeeded",
        "budget spent": "ended: its time budget is spent",
        "mlflow away": f"ended with MLflow at {secrets.redact(plan.mlflow_uri)} not "
        f"answering: once it answers, write the rest with {plan.resume_command}",
        "interrupted": f"interrupted ({end.get('by')}): finish it with {plan.resume_command}",
    }
    why = secrets.first_line(err) if err is not None else f"exit status {status}"
    line = f"invocation #{number} of study {plan.study_name} "
    report = None if "://" in opened.record.path else report_path(opened.record.path)
    return {
        "study": plan.study_name,
        "invocation": number,
        **end,
        "message": line + said.get(end["outcome"], f"failed: {why}"),
        "best": best_so_far(opened),
        "mlflow": {
            "uri": secrets.redact(plan.mlflow_uri),
            "experiment": plan.experiment,
            "parent_run": opened.parent_id,
        },
        "report": report if report and os.path.isfile(report) else None,
        "host": socket.gethostname(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def best_so_far(opened: Any) -> dict[str, Any] | None:
    """The study's best trial (number, objective, value, params); None if none or unread."""
    from study import ledger

    try:
        best = ledger.best_trial(opened.study)
    except Exception:  # the store may be what failed
        return None
    if best is None:
        return None
    search = opened.plan.search
    objective = {"objective": search.metric, "mode": search.mode, "value": best.value}
    return {"trial": best.number, **objective, "params": dict(best.params)}


def body(message: dict[str, Any], fmt: str) -> bytes:
    """The bytes posted: the message as JSON, or Slack's `{"text": ...}` of its lines."""
    if fmt != "slack":
        return json.dumps(message, default=str).encode()
    lines = [f"flairseg: {message['message']} (exit {message['exit_status']})"]
    if best := message["best"]:
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        value = f"{best['value']:.4f}" if isinstance(best["value"], float) else best["value"]
        lines.append(f"best so far: trial #{best['trial']}, {best['objective']} {value}; {params}")
    ml = message["mlflow"]
    lines.append(f"MLflow: {ml['uri']}, experiment {ml['experiment']}, run {ml['parent_run']}")
    lines += [f"report: {message['report']}"] if message["report"] else []
    lines.append(f"{message['host']}, {message['time']}")
    return json.dumps({"text": "\n".join(lines)}).encode()
