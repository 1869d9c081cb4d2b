"""Open an HTML file in headless Chromium (Debian's package) and read back what it drew."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # software WebGL for parcoords, without the fallback notice
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
# notices of the software GL driver, not JavaScript errors
GL_NOTICE = re.compile(r"GL Driver Message|WebGL|GPU stall", re.IGNORECASE)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = (
        "Chromium is not installed (scripts/setup.sh --tests installs Debian's package when it can)"
    )
    if os.environ.get("FLAIRSEG_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Rendered:
    dom: str
    console: list[str]  # every console message that is not a GL driver notice

    def attr(self, name: str) -> int | None:
        m = re.search(rf'{name}="(\d+)"', self.dom)
        return int(m.group(1)) if m else None

    @property
    def drawn(self) -> int:
        return len(re.findall(r'data-drawn="1"', self.dom))


def render(page: Path, budget_ms: int = 20000, height: int = 900) -> Rendered:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                f"--window-size=1400,{height}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    console = [
        line
        for line in result.stderr.splitlines()
        if ":CONSOLE" in line and not GL_NOTICE.search(line)
    ]
    return Rendered(result.stdout, console)


def screenshot(page: Path, out: Path, height: int = 4200) -> Path:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size=1400,{height}",
                "--virtual-time-budget=20000",
                f"--screenshot={out}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=600,
            check=True,
        )
    return out


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    fds 3 and 4, NUL-separated JSON), for pages that must be read while a single-page app
    runs in real time: navigate, evaluate JavaScript, wait for what the page shows."""

    def __init__(self, height: int = 900) -> None:
        from tests import reaper

        program = chromium()  # may skip: before any pipe or folder exists
        chrome_in, ours_in = os.pipe()  # Chromium reads its fd 3, we write
        ours_out, chrome_out = os.pipe()  # Chromium writes its fd 4, we read

        def fds() -> None:  # in the child: the two ends onto 3 and 4, whatever they were
            high_in, high_out = os.dup(chrome_in), os.dup(chrome_out)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.profile = tempfile.mkdtemp(prefix="chromium-")
        argv = [
            program,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size=1400,{height}",
        ]
        self.proc = subprocess.Popen(
            [*argv, "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        reaper.own_process(self.proc, "Chromium")
        os.close(chrome_in)
        os.close(chrome_out)
        self._w = os.fdopen(ours_in, "wb", buffering=0)
        self._r = os.fdopen(ours_out, "rb", buffering=0)
        self._buffer, self._n = b"", 0
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        except BaseException:
            self.close()
            raise
        self.session = attached["sessionId"]

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        import json

        self._n += 1
        message = {"id": self._n, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._w.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = self._r.read(1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._n:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, self.session)

    def js(self, expression: str):
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session
        )
        return result.get("result", {}).get("value")

    def wait_for_text(self, text: str, timeout: float = 300) -> str:
        """The page's text once it shows `text` (a progress wait; the limit is a safety net)."""
        import json
        import time

        deadline = time.monotonic() + timeout
        probe = "document.body ? document.body.innerText : ''"
        shown = ""
        while time.monotonic() < deadline:
            shown = self.js(probe) or ""
            if text in shown:
                return shown
            time.sleep(0.3)
        raise AssertionError(f"the page never showed {json.dumps(text)}:\n{shown[-2000:]}")

    def close(self) -> None:
        import contextlib
        import signal

        from tests import reaper

        with contextlib.suppress(OSError):
            self._w.close()  # Chromium ends when its pipe closes
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            self._r.close()
        reaper.release(self.proc.pid)
        shutil.rmtree(self.profile, ignore_errors=True)
