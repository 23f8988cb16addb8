"""Build hooks of the docs site: pages that come from the code itself.

A page holds markers, each replaced by text made from the installed pglab when the site
is built, so the reference never drifts from the code:

- ``<!-- cli -->``: every ``pglab`` command's ``--help``;
- ``<!-- config -->``: every config option, its default and its help, by section;
- ``<!-- docstring: pglab.module.name -->``: that object's docstring, its reST math
  turned into the site's math;
- ``<!-- code: pglab.module.name -->``: the docstring beside the source that computes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import textwrap
from typing import Any

MARKER = re.compile(r"<!-- (cli|config|docstring|code)(?:: ([\w.]+))? -->")


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(lambda m: _render(m.group(1), m.group(2)), markdown)


def _render(kind: str, name: str | None) -> str:
    if kind == "cli":
        return _cli()
    if kind == "config":
        return _config()
    target = _resolve(name or "")
    text = _markdown(inspect.getdoc(target) or "")
    if kind == "docstring":
        return text
    source = textwrap.dedent(inspect.getsource(target))
    where = f"`{target.__module__}.{target.__qualname__}`"
    return f"{text}\n\nThe code ({where}):\n\n```python\n{source}```\n"


def _resolve(name: str) -> Any:
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            target = getattr(target, attr)
        return target
    raise ValueError(f"docs: cannot resolve {name!r}")


def _markdown(doc: str) -> str:
    """reST of pglab's docstrings to the site's markdown: math, literals, roles, tables."""
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith(".. math::"):
            inline = line.split("::", 1)[1].strip()
            block, i = ([inline] if inline else []), i + 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i].strip())
                i += 1
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}$$", *(f"{indent}{b}" for b in block if b), f"{indent}$$", ""]
            continue
        out.append(line)
        i += 1
    text = _tables("\n".join(out))  # first: its columns are where the reST put them
    text = re.sub(r":math:`([^`]+)`", lambda m: f"\\({m.group(1)}\\)", text)
    text = re.sub(r":(?:func|class|meth|data|mod|attr):`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _tables(text: str) -> str:
    """reST simple tables (``====`` rules) as markdown tables."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        rule = lines[i]
        if re.fullmatch(r"=+( +=+)+", rule.strip()):
            starts = [m.start() for m in re.finditer(r"=+", rule)]
            rows, i = [], i + 1
            while i < len(lines) and not re.fullmatch(r"=+( +=+)+", lines[i].strip()):
                rows.append(lines[i])
                i += 1
            i += 1  # the rule under the header
            body = []
            while i < len(lines) and not re.fullmatch(r"=+( +=+)+", lines[i].strip()):
                body.append(lines[i])
                i += 1
            i += 1

            header = _cells(rows[0], starts) if rows else [""] * len(starts)
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(starts)]
            out += ["| " + " | ".join(_cells(row, starts)) + " |" for row in body if row.strip()]
            continue
        out.append(rule)
        i += 1
    return "\n".join(out)


def _cells(row: str, starts: list[int]) -> list[str]:
    """A row of a reST simple table cut at its columns' ``starts``."""
    return [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]


def _cli() -> str:
    from pglab.cli import build_parser

    parser = build_parser()
    parts = [f"```text\n{parser.format_help()}```"]
    for action in parser._actions:  # argparse keeps its subcommands here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append(f"## pglab {name}\n\n```text\n{sub.format_help()}```")
    return "\n\n".join(parts)


def _config() -> str:
    from pglab.config import SECTIONS

    parts = []
    for section, cls in SECTIONS.items():
        rows = ["| option | default | what it sets |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = (
                f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            )
            help_text = f.metadata.get("help", "").replace("|", "\\|")
            rows.append(f"| `{section}.{f.name}` | `{default!r}` | {help_text} |")
        doc = inspect.getdoc(cls) or ""
        parts.append(f"## [{section}]\n\n{doc}\n\n" + "\n".join(rows))
    return "\n\n".join(parts)
