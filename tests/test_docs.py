"""The documentation site (docs/, mkdocs.yml) builds offline with warnings as errors, its
pages open in headless Chromium with every link landing on a page and an anchor that exist,
the command-line reference lists every flag each command's `--help` prints, and the search
file reference lists exactly the keys a search file may hold."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from study.search_checks import TOP_KEYS
from tests.browser import render
from tests.study_helpers import REPO

sys.path.insert(0, str(REPO / "docs" / "hooks"))
import generated  # noqa: E402  (the build's own hook: which commands the reference covers)

COMMANDS = [
    "study.run", "flairseg.train", "flairseg.predict", "flairseg.phantom", "dashboards.report",
    "study.export", "study.register",
]  # fmt: skip
OPENED = ["index.html", "getting-started.html", "reference/cli.html", "concepts/study.html",
          "guides/operating.html", "results/training-speed.html"]  # fmt: skip
HREF = re.compile(r'<a\b[^>]*\bhref="([^"]+)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-3000:]}"
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    return out


def broken_links(page: Path, dom: str, site: Path) -> list[str]:
    """Every link of a drawn page that leaves the page for a file of the site that is not
    there, or for an anchor its target page does not have."""
    broken = []
    for href in {html.unescape(h) for h in HREF.findall(dom)}:
        parts = urlsplit(href)
        if parts.scheme in ("http", "https", "mailto") or parts.netloc:
            continue
        if parts.scheme == "file":
            target = Path(unquote(parts.path))
        elif not parts.path:
            target = page
        else:
            target = (page.parent / unquote(parts.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file() or not target.resolve().is_relative_to(site.resolve()):
            broken.append(f"{href} (no file)")
        elif parts.fragment and f'id="{unquote(parts.fragment)}"' not in target.read_text():
            broken.append(f"{href} (no anchor)")
    return broken


@pytest.mark.parametrize("name", OPENED)
def test_a_page_opens_with_no_broken_link(site: Path, name: str) -> None:
    page = site / name
    rendered = render(page)
    links = HREF.findall(rendered.dom)
    assert len(links) > 20, f"{name}: drawn without its navigation ({len(links)} links)"
    assert broken_links(page, rendered.dom, site) == [], name


def test_every_page_of_the_site_links_only_to_what_is_there(site: Path) -> None:
    """The same check without a browser, on every page the build wrote (the navigation is
    in the HTML itself). 404.html is left out: a web server shows it for any missing path,
    so its links are absolute from the site's root."""
    broken = {
        str(page.relative_to(site)): found
        for page in site.rglob("*.html")
        if page.name != "404.html" and (found := broken_links(page, page.read_text(), site))
    }
    assert broken == {}


def test_the_cli_reference_lists_every_flag_help_prints(site: Path) -> None:
    text = html.unescape(render(site / "reference/cli.html").dom)
    for command in COMMANDS:
        helped = generated.parser_of(command).format_help()  # what `--help` prints
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", helped))
        assert flags, command
        section = text.split(f"python -m {command}", 1)[1]
        missing = sorted(f for f in flags if f"{f}" not in section)
        assert not missing, f"python -m {command}: the reference lacks {missing}"


def test_the_search_file_reference_has_exactly_the_keys_a_search_file_takes() -> None:
    page = (REPO / "docs/reference/search-file.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", page.split("## Settings")[0], re.MULTILINE))
    assert listed == TOP_KEYS


def test_the_site_names_every_command_of_the_package() -> None:
    """Every command line of the project (a module whose parser the reference can read) is
    on the reference page."""
    page = (REPO / "docs/reference/cli.md").read_text()
    for command in COMMANDS:
        assert f"<!-- cli: {command} -->" in page
    for module in ("flairseg", "study", "dashboards"):
        for path in (REPO / module).glob("*.py"):
            if "def build_parser" in path.read_text():
                name = f"{module}.{path.stem}"
                assert name in COMMANDS or name == "study.cli", f"{name} is not in the reference"
