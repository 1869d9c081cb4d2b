"""--notify (study.notify): one message when an invocation ends, whatever way it ends,
received by a real HTTP server on 127.0.0.1 and its body checked; a server that refuses or
hangs costs one warning and a bounded wait, never the study's exit status; the URL, a
secret as a whole, is never shown, logged to MLflow or written to the Optuna ledger."""

from __future__ import annotations

import argparse
import base64
import json
import signal
import socket
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from study_helpers import StudyEnv, wait_for, write_search
from test_study_faults import stop

from flairseg.errors import ConfigError
from study import notify, secrets, webhook

TINY = ("--search", "combo_alpha", "--image-size", "32", "--trials", "1", "--max-epochs", "1")
TOKEN = "XoxbT0kenInThePath42"  # what a webhook URL hides in its path (Slack's do)
PASSWORD = "n0t1fy-Pa55word"
WAIT_S = 60  # a safety net only: the server is waited on for its request


class Hook:
    """A real HTTP server on 127.0.0.1 that keeps each POST (path, headers, body) and
    answers `status`; `hang`: it reads the request and never answers, until `close`."""

    def __init__(self, status: int = 200, hang: bool = False, location: str = "") -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.arrived:
                    hook.got.append((self.path, dict(self.headers), data))
                    hook.arrived.notify_all()
                if hang:
                    hook.release.wait()
                    return
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, login: str = "") -> str:
        at = f"{login}@" if login else ""
        return f"http://{at}127.0.0.1:{self.server.server_port}/hooks/T0/B0/{TOKEN}"

    def shown(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/…"

    def wait(self, count: int = 1) -> list[tuple[str, dict[str, str], bytes]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.got) >= count, WAIT_S), self.got
            return list(self.got)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT_S)


@pytest.fixture()
def hook():
    server = Hook()
    yield server
    server.close()


@pytest.fixture()
def hanging():
    server = Hook(hang=True)
    yield server
    server.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: a connection there is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login_of(headers: dict[str, str]) -> str:
    scheme, _, value = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(value).decode()


# -- posting, in process -------------------------------------------------------------------


def test_a_post_reaches_the_server_with_the_login_as_basic_auth(hook: Hook) -> None:
    assert webhook.post(hook.url(f"flair:{PASSWORD}"), b'{"study": "s"}', 5) is None
    ((path, headers, data),) = hook.wait()
    assert path == f"/hooks/T0/B0/{TOKEN}" and data == b'{"study": "s"}'
    assert headers["Content-Type"] == "application/json"
    assert login_of(headers) == f"flair:{PASSWORD}"


def test_a_refusing_or_failing_server_is_a_reason_never_an_exception() -> None:
    url = f"http://127.0.0.1:{closed_port()}/hooks/{TOKEN}"
    assert webhook.post(url, b"{}", 5) == "Connection refused"
    failing = Hook(status=500)
    target = Hook()
    moved = Hook(status=302, location=target.url())
    try:
        assert webhook.post(failing.url(), b"{}", 5) == "HTTP 500 Internal Server Error"
        assert webhook.post(moved.url(), b"{}", 5) == "HTTP 302 Found"  # followed: never
        assert target.got == []
    finally:
        for server in (failing, target, moved):
            server.close()


def test_a_hanging_server_costs_the_bound_and_a_reason(hanging: Hook) -> None:
    assert webhook.post(hanging.url(), b"{}", 0.5) == "no answer in 0.5 s"
    assert len(hanging.wait()) == 1  # it was asked once


def test_each_way_an_invocation_ends_has_its_outcome() -> None:
    assert notify.ending(0, None, None) == {"outcome": "finished", "exit_status": 0}
    assert notify.ending(1, None, None) == {"outcome": "no trial succeeded", "exit_status": 1}
    assert notify.ending(3, None, None) == {"outcome": "mlflow away", "exit_status": 3}
    for status, caught, by in [
        (130, None, "Ctrl+C"),
        (143, "by SIGTERM", "SIGTERM"),
        (129, "by SIGHUP", "SIGHUP"),
        (75, "(no space left in /data; a checkpoint needs about 1.4 MB)", "no space left in"),
    ]:
        end = notify.ending(status, None, caught)
        assert end["outcome"] == "interrupted" and end["exit_status"] == status
        assert end["by"].startswith(by)
    failed = notify.ending(None, ConfigError("--json x: cannot write it"), None)
    assert failed == {"outcome": "failed", "exit_status": 2}
    assert notify.ending(None, RuntimeError("boom"), None)["exit_status"] == 1


def test_the_slack_body_is_the_message_in_lines() -> None:
    message = {
        "message": "invocation #2 of study s finished",
        "exit_status": 0,
        "best": {"trial": 3, "objective": "val_iou", "value": 0.71234, "params": {"lr": 0.01}},
        "mlflow": {"uri": "sqlite:///m.db", "experiment": "e", "parent_run": "abc"},
        "report": "/r/report.html",
        "host": "h",
        "time": "2025-01-01T00:00:00+00:00",
    }
    (text,) = json.loads(notify.body(message, "slack")).values()
    assert text.splitlines() == [
        "flairseg: invocation #2 of study s finished (exit 0)",
        "best so far: trial #3, val_iou 0.7123; lr=0.01",
        "MLflow: sqlite:///m.db, experiment e, run abc",
        "report: /r/report.html",
        "h, 2025-01-01T00:00:00+00:00",
    ]
    assert json.loads(notify.body(message, "json")) == message


def test_the_url_is_masked_and_commands_name_its_variable(hook: Hook) -> None:
    url = hook.url(f"flair:{PASSWORD}")
    assert notify.from_args(argparse.Namespace(notify=url)) == url
    said = secrets.scrub(f"could not reach {url}, nor {hook.url()}: /hooks/T0/B0/{TOKEN}")
    assert TOKEN not in said and PASSWORD not in said
    for argv in (["--notify", url], [f"--notify={url}"]):
        line = secrets.command_line(["--search", "s", *argv, "--trials", "2"])
        assert line == 'python -m study.run --search s --notify "$FLAIRSEG_NOTIFY_URL" --trials 2'
    from study.plan import resume_command

    args = argparse.Namespace(search="s", storage="st", optuna_storage=None, register=None)
    args.__dict__.update(no_register=False, notify=url, notify_format="slack")
    line = resume_command(args, "s")
    assert line.endswith(' --notify "$FLAIRSEG_NOTIFY_URL" --notify-format slack --resume'), line


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://hooks.example/services/{TOKEN}",
        f"hooks.example/services/{TOKEN}",
        f"http:///services/{TOKEN}",
        f"http://hooks.example:99999/services/{TOKEN}",
        f"http://hooks.example/services/{TOKEN} x",
    ],
)
def test_a_bad_url_is_refused_in_one_line_before_anything_is_written(
    tmp_path: Path, phantom_dir: Path, url: str
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    code, stdout, stderr = env.run_here(*TINY, "--notify", url)
    assert code == 2, stdout + stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: --notify ") and "http(s)://" in line, line
    assert TOKEN not in stdout + stderr
    assert not (env.root / "studies").exists() and not (env.root / "mlflow.db").exists()


def test_the_variable_and_the_timeout_are_checked_too(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    monkeypatch.setenv(notify.ENV, f"mailto:{TOKEN}@example.org")
    code, stdout, stderr = env.run_here(*TINY)
    assert code == 2 and stderr.startswith(f"error: ${notify.ENV} "), stderr
    assert TOKEN not in stdout + stderr
    monkeypatch.setenv(notify.ENV, f"https://hooks.example/{TOKEN}")
    monkeypatch.setenv(notify.TIMEOUT_ENV, "soon")
    code, stdout, stderr = env.run_here(*TINY)
    assert code == 2 and stderr.startswith(f"error: ${notify.TIMEOUT_ENV} 'soon'"), stderr
    assert not (env.root / "studies").exists() and not (env.root / "mlflow.db").exists()


# -- whole studies ---------------------------------------------------------------------------


def assert_kept_secret(env: StudyEnv, *texts: str) -> None:
    """The webhook's token and password in no output, no MLflow param or tag, no Optuna
    attribute, no file the study wrote (its stores, Tune's folders, the report)."""
    for text in texts:
        assert TOKEN not in text and PASSWORD not in text, text
    for run in env.runs("combo_alpha"):
        logged = json.dumps([run.data.params, run.data.tags])
        assert TOKEN not in logged and PASSWORD not in logged
    study = env.study("combo_alpha")
    attrs = [study.user_attrs] + [[t.user_attrs, t.system_attrs] for t in study.trials]
    assert TOKEN not in json.dumps(attrs, default=str)
    for path in (p for p in env.root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert TOKEN.encode() not in data and PASSWORD.encode() not in data, path


def parent_run(env: StudyEnv):
    (parent,) = [r for r in env.runs("combo_alpha") if r.data.tags.get("role") == "study"]
    return parent


@pytest.mark.slow
def test_interrupted_then_resumed_each_posts_its_end(
    tmp_path: Path, phantom_dir: Path, hook: Hook, hanging: Hook
) -> None:
    """Ctrl+C: the variable's URL gets Slack's body; the --resume that finishes the
    invocation posts the whole message to a server that never answers: one warning after
    the bound, exit 0 all the same."""
    from study import ledger

    env = StudyEnv(tmp_path, phantom_dir)
    extra = {notify.ENV: hook.url()}
    proc, log = env.start(*TINY, "--notify-format", "slack", env_extra=extra)
    try:
        wait_for(log, "live view: ", proc)  # the banner's last line: the parent run exists
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
    finally:
        stop(proc)
    out = log.read_text()
    assert proc.returncode == 130, out
    assert f"notify: {hook.shown()} when it ends" in out
    ((path, _, data),) = hook.wait()
    assert path == f"/hooks/T0/B0/{TOKEN}"
    (text,) = json.loads(data).values()
    first = text.splitlines()[0]
    assert first.startswith("flairseg: invocation #1 of study combo_alpha interrupted (Ctrl+C)")
    assert "--resume" in first and first.endswith("(exit 130)"), text
    assert "warning: --notify" not in out

    url = hanging.url(f"flair:{PASSWORD}")
    summary = tmp_path / "summary.json"
    again = env.run(
        "--search", "combo_alpha", "--resume", "--json", str(summary), "--notify", url,
        env_extra={notify.ENV: None, notify.TIMEOUT_ENV: "1"},
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    warnings = [line for line in again.stderr.splitlines() if "--notify" in line]
    assert warnings == [
        f"warning: --notify: could not post to {hanging.shown()} (no answer in 1 s)"
    ]
    ((_, headers, data),) = hanging.wait()
    assert login_of(headers) == f"flair:{PASSWORD}"
    message = json.loads(data)
    best = ledger.best_trial(env.study("combo_alpha"))
    assert json.loads(summary.read_text())["best_trial"] == best.number
    parent = parent_run(env)
    report = Path(message.pop("report"))
    assert report.is_file() and report.parent == Path(parent.data.tags["results"])
    assert datetime.fromisoformat(message.pop("time")).tzinfo is not None
    assert message == {
        "study": "combo_alpha",
        "invocation": 1,
        "outcome": "finished",
        "exit_status": 0,
        "message": "invocation #1 of study combo_alpha finished",
        "best": {
            "trial": best.number,
            "objective": "val_iou",
            "mode": "max",
            "value": best.value,
            "params": best.params,
        },
        "mlflow": {
            "uri": env.mlflow_uri,
            "experiment": "combo_alpha",
            "parent_run": parent.info.run_id,
        },
        "host": socket.gethostname(),
    }
    assert_kept_secret(env, out, again.stdout, again.stderr)


@pytest.mark.slow
def test_a_failed_invocation_posts_its_end(tmp_path: Path, phantom_dir: Path, hook: Hook) -> None:
    """--json's folder taken by a file once the study runs: the error at the end is posted
    (the URL given as the flag, with a login), then ends the driver as it would have."""
    env = StudyEnv(tmp_path, phantom_dir)
    target = tmp_path / "out" / "summary.json"
    proc, log = env.start(*TINY, "--json", str(target), "--notify", hook.url(f"u:{PASSWORD}"))
    try:
        wait_for(log, "live view: ", proc)
        (tmp_path / "out").write_text("a file where the summary's folder would go")
        proc.wait(timeout=900)
    finally:
        stop(proc)
    out = log.read_text()
    assert proc.returncode == 2, out
    assert out.strip().splitlines()[-1].startswith(f"error: --json {target}: cannot write it")
    ((_, headers, data),) = hook.wait()
    assert login_of(headers) == f"u:{PASSWORD}"
    message = json.loads(data)
    assert (message["outcome"], message["exit_status"], message["invocation"]) == ("failed", 2, 1)
    assert message["message"].startswith(
        f"invocation #1 of study combo_alpha failed: --json {target}: cannot write it"
    )
    assert message["best"]["trial"] == 0 and message["report"] is None
    assert message["mlflow"]["parent_run"] == parent_run(env).info.run_id
    command = parent_run(env).data.tags["command"]
    assert '--notify "$FLAIRSEG_NOTIFY_URL"' in command, command
    assert_kept_secret(env, out)


ALL_NAN = """
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space:
  lr: {choice: [1.0e+30]}
points: [{lr: 1.0e+30}]
trials: 1
asha: {max_epochs: 1}
"""


@pytest.mark.slow
def test_a_refusing_server_is_one_warning_and_the_exit_status_stays(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """No trial succeeds (exit 1); the post to a closed port is refused: one warning, exit 1."""
    env = StudyEnv(tmp_path, phantom_dir)
    port = closed_port()
    search = write_search(tmp_path / "allnan.yaml", ALL_NAN)
    url = f"http://127.0.0.1:{port}/hooks/{TOKEN}"
    result = env.run("--search", str(search), "--notify", url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no trial" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "--notify" in line]
    expected = f"http://127.0.0.1:{port}/… (Connection refused)"
    assert warnings == [f"warning: --notify: could not post to {expected}"], result.stderr
    assert TOKEN not in result.stdout + result.stderr and "Traceback" not in result.stderr
