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
