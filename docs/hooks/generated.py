"""MkDocs hook: the pages' generated parts, made at every build from the code itself.

`<!-- cli: MODULE -->` becomes that command line's reference, read from its argparse parser
(the module's `build_parser()`; `python -m study.run`'s lives in `study.cli`): the usage line
and one row per flag with its default and help, exactly the flags `--help` prints.
`<!-- settings -->` becomes the table of every training setting a search file's `fixed:` and
`space:` take (the models' and losses' knobs included), from `flairseg`'s registries.
"""

from __future__ import annotations

import argparse
import html
import importlib
import inspect
import re

MARKER = re.compile(r"<!--\s*(cli|settings):?\s*([\w.]*)\s*-->")
# a plain setting of TrainConfig, its default and the comment beside it
COMMENTED = re.compile(r"^    (\w+): \w+ = (\S+)\s+#\s*(.*)$", re.MULTILINE)
# the module a command runs -> the module that builds its parser
PARSERS = {"study.run": "study.cli"}


def parser_of(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(PARSERS.get(command, command)).build_parser()


def cell(text: object) -> str:
    """A table cell: markup shown as text, pipes kept inside the cell, one line."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "&#124;")


def flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()  # argparse's own %(default)s expansion
    rows = ["| flag | value | default | what it does |", "| --- | --- | --- | --- |"]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.dest}`"
        if action.nargs == 0:
            value = ""
        elif action.choices:
            value = " \\| ".join(f"`{c}`" for c in action.choices)
        else:
            value = f"`{action.metavar or action.dest.upper()}`"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else default
        if action.required:
            shown = "required"
        helped = formatter._expand_help(action) if action.help else ""
        rows.append(f"| {names} | {value} | {cell(shown)} | {cell(helped)} |")
    return rows


def cli(command: str) -> str:
    parser = parser_of(command)
    usage = parser.format_usage().removeprefix("usage: ").strip()
    parts = [f"```text\n{usage}\n```", ""]
    if parser.description:
        parts += [cell(parser.description), ""]
    return "\n".join(parts + flag_rows(parser)) + "\n"


def settings() -> str:
    from flairseg.config import TrainConfig
    from flairseg.losses import LOSSES
    from flairseg.models import MODELS

    rows = ["| setting | of | default | what it is |", "| --- | --- | --- | --- |"]
    knobs: dict[str, list[tuple[str, object, str]]] = {}  # a shared name (depth): each owner
    for registry in (MODELS, LOSSES):
        for builder in registry.names():
            for knob in registry.knobs(builder):
                knobs.setdefault(knob.name, []).append((builder, knob.default, knob.help))
    for name, default, comment in COMMENTED.findall(inspect.getsource(TrainConfig)):
        if name not in knobs:
            rows.append(f"| `{name}` | every run | {cell(default)} | {cell(comment)} |")
    for name, owned in sorted(knobs.items()):
        of = ", ".join(f"`{builder}`" for builder, _, _ in owned)
        presets = {repr(default) for _, default, _ in owned}
        default = owned[0][1] if len(presets) == 1 else "; ".join(f"{b} {d}" for b, d, _ in owned)
        helped = "; ".join(dict.fromkeys(h for _, _, h in owned))
        rows.append(f"| `{name}` | {of} | {cell(default)} | {cell(helped)} |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, **_: object) -> str:
    return MARKER.sub(lambda m: cli(m.group(2)) if m.group(1) == "cli" else settings(), markdown)
