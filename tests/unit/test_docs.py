"""Docs generated from the code stay true to it: the protocol's method table (from
migrate/wire/methods.py) and the architecture's code map (from docstrings and the import
contracts). When one fails, run the script it names and commit the doc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["protocol_doc.py", "architecture_doc.py"])
def test_generated_docs_are_current(script: str) -> None:
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--check"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
