"""MIGRATE_KEEP_CRIU_LOGS (criu.keep_logs): CRIU's logs are copied aside with their birth
times before their directory is deleted, and only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migrate.checkpoint import criu


def _work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "dump.log").write_text("(00.000000) CRIU run id = x\n")
    (work / "lazy-pages.socket").write_text("")  # not a log: not copied
    return work


def test_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(criu.ENV_KEEP_LOGS, raising=False)
    assert criu.keep_logs(_work(tmp_path), "m1-source") is None


def test_copies_the_logs_with_their_birth_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = tmp_path / "kept"
    monkeypatch.setenv(criu.ENV_KEEP_LOGS, str(keep))
    out = criu.keep_logs(_work(tmp_path), "m1-source")
    assert out == keep / "m1-source"
    assert sorted(p.name for p in out.iterdir()) == ["btime.json", "dump.log"]
    assert (out / "dump.log").read_text().startswith("(00.000000)")
    births = json.loads((out / "btime.json").read_text())
    assert set(births) == {"dump.log"} and births["dump.log"] >= 0


def test_never_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(criu.ENV_KEEP_LOGS, str(blocker))  # not a directory
    assert criu.keep_logs(_work(tmp_path), "m1-source") is None
