"""The precheck that refuses containers with processes of another user when this host lacks
CAP_SYS_RESOURCE (CRIU's prlimit() would fail on them; PLATFORM.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fake_engine import plain_spec

from migrate.checkpoint import criu
from migrate.core.errors import Unsupported
from migrate.engines.base import ContainerSpec, ProcessInfo
from migrate.source import precheck

ME = (os.getuid(),) * 4
MY_G = (os.getgid(),) * 4


class _Engine:
    def __init__(self, procs: list[ProcessInfo]) -> None:
        self.procs = procs

    def processes(self, ref: str) -> list[ProcessInfo]:
        return self.procs


def _spec() -> ContainerSpec:
    return plain_spec(name="db")


def test_refuses_other_users_without_the_capability(monkeypatch: Any) -> None:
    monkeypatch.setattr(criu, "has_cap_sys_resource", lambda: False)
    engine = _Engine(
        [
            ProcessInfo(10, ME, MY_G, "sh -c init"),
            ProcessInfo(11, (999,) * 4, (999,) * 4, "postgres -D /data"),
        ]
    )
    with pytest.raises(Unsupported) as e:
        precheck.check_process_owners(engine, _spec())  # type: ignore[arg-type]
    assert "pid 11 uid 999 (postgres -D /data)" in e.value.message
    assert "CAP_SYS_RESOURCE" in e.value.message and e.value.hint
    assert e.value.details["pids"] == [11]
    # A saved or filesystem id of another user is enough for prlimit() to refuse.
    engine.procs = [ProcessInfo(12, (*ME[:3], 33), MY_G, "nginx: worker")]
    with pytest.raises(Unsupported):
        precheck.check_process_owners(engine, _spec())  # type: ignore[arg-type]


def test_passes_all_root_or_with_the_capability(monkeypatch: Any) -> None:
    engine = _Engine([ProcessInfo(10, ME, MY_G, "redis-server")])
    monkeypatch.setattr(criu, "has_cap_sys_resource", lambda: False)
    precheck.check_process_owners(engine, _spec())  # type: ignore[arg-type]
    engine.procs.append(ProcessInfo(11, (999,) * 4, (999,) * 4, "postgres"))
    monkeypatch.setattr(criu, "has_cap_sys_resource", lambda: True)
    precheck.check_process_owners(engine, _spec())  # type: ignore[arg-type]


def test_has_cap_sys_resource_reads_capeff(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000001000000\n")
    assert criu.has_cap_sys_resource(status)
    status.write_text("Name:\tx\nCapEff:\t00000000a80425fb\n")
    assert not criu.has_cap_sys_resource(status)
    assert not criu.has_cap_sys_resource(tmp_path / "missing")
