"""What the doc generators beside this file share: a doc holds a generated block between two
marker lines; rewrite that block in place, or with ``--check`` exit 1 when it is out of date."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def render(doc: Path, text: str, begin: str, end: str, body: str) -> str:
    """``text`` (the doc's content) with ``body`` between the markers in place of what was."""
    head, sep, rest = text.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise SystemExit(f"{doc}: the markers {begin!r} and {end!r} are missing")
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main(doc: Path, begin: str, end: str, body: Callable[[], str], script: str) -> int:
    """The command line of a generator: ``script`` names it in the out-of-date message."""
    text = doc.read_text()
    new = render(doc, text, begin, end, body())
    if "--check" in sys.argv[1:]:
        if new != text:
            print(f"{doc} is out of date: run python {script}", file=sys.stderr)
            return 1
        return 0
    doc.write_text(new)
    return 0
