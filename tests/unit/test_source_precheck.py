"""The source precheck shared by run, export and drill (migrate/source/precheck.py): the order
of its refusals, each command's wording, and its hooks."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest
from fake_engine import plain_spec

from migrate.checkpoint import criu
from migrate.core.errors import ContainerNotRunning, CriuUnavailable, Unsupported
from migrate.engines.base import ContainerSpec, ContainerState, ProcessInfo
from migrate.source import precheck

pytestmark = pytest.mark.unit

SPEC = plain_spec()


class _Engine:
    name = "docker"  # the engine's own command names its hints (`docker start`, ...)

    def __init__(self, state: Any, execs: list[str] | None = None) -> None:
        self.st = state
        self.execs = execs or []
        self.calls: list[str] = []

    def state(self, ref: str) -> Any:
        self.calls.append("state")
        return self.st

    def spec(self, ref: str) -> ContainerSpec:
        self.calls.append("spec")
        return SPEC

    def exec_sessions(self, ref: str) -> list[str]:
        self.calls.append("exec_sessions")
        return self.execs

    def processes(self, ref: str) -> list[ProcessInfo]:
        self.calls.append("processes")
        return [ProcessInfo(1, (os.getuid(),) * 4, (os.getgid(),) * 4, "sh")]

    def shares_network_namespace(self, spec: ContainerSpec) -> bool:
        return spec.network_mode == "host" or spec.network_mode.startswith("container:")


def _state(running: bool = True, paused: bool = False) -> ContainerState:
    return ContainerState("c1", "web", "exited", running, paused, pid=1, upper_dir="")


@pytest.mark.parametrize("verb", ["migrate", "are drilled", "are exported"])
def test_not_running_refused_in_each_commands_words(verb: str) -> None:
    with pytest.raises(ContainerNotRunning) as e:
        precheck.check_source(_Engine(_state(running=False)), "web", only_running=verb)  # type: ignore[arg-type]
    assert e.value.message == f"container web is exited: only running containers {verb}"
    assert "docker start web" in e.value.hint


def test_hooks_run_in_order_and_exec_sessions_refused(monkeypatch: Any) -> None:
    monkeypatch.setattr(criu, "has_cap_sys_resource", lambda: False)
    engine = _Engine(_state())
    seen: list[str] = []
    found = precheck.check_source(
        engine,  # type: ignore[arg-type]
        "web",
        only_running="migrate",
        on_state=lambda st: seen.append(f"state:{st.name}"),
        on_spec=lambda spec: seen.append(f"spec:{spec.id}") or engine.calls.append("on_spec"),
    )
    assert found.spec is SPEC and found.state.name == "web"
    assert seen == ["state:web", "spec:c1"]
    assert engine.calls == ["state", "spec", "on_spec", "exec_sessions", "processes"]
    with pytest.raises(Unsupported) as e:
        precheck.check_source(_Engine(_state(), ["sh (pid 7)"]), "web", only_running="migrate")  # type: ignore[arg-type]
    assert "`docker exec` sessions are running in web: sh (pid 7)" in e.value.message


def test_shared_network_refused_with_the_callers_hint() -> None:
    engine = _Engine(_state())
    precheck.refuse_shared_network(engine, SPEC, hint="h")  # type: ignore[arg-type]
    with pytest.raises(Unsupported) as e:
        precheck.refuse_shared_network(engine, replace(SPEC, network_mode="host"), hint="own")  # type: ignore[arg-type]
    assert e.value.message == "web uses network mode 'host'" and e.value.hint == "own"


@pytest.mark.parametrize(
    ("version", "say_found", "message"),
    [
        ((4, 1, 0), True, "CRIU >= 4.2 is needed on the source (found 4.1.0)"),
        ((4, 1, 0), False, "CRIU >= 4.2 is needed on the source"),
        (None, True, "CRIU >= 4.2 is needed on the source"),
    ],
)
def test_require_criu(
    monkeypatch: Any, version: tuple[int, int, int] | None, say_found: bool, message: str
) -> None:
    caps = criu.CriuCapabilities(path="/x/criu", version=version, check_ok=True, check_output="")
    monkeypatch.setattr(criu, "find_criu", lambda: "/x/criu")
    monkeypatch.setattr(criu, "capabilities", lambda binary: caps)
    with pytest.raises(CriuUnavailable) as e:
        precheck.require_criu(say_found=say_found)
    assert e.value.message == message and "make setup" in e.value.hint
    ok = replace(caps, version=(4, 2, 1))
    monkeypatch.setattr(criu, "capabilities", lambda binary: ok)
    assert precheck.require_criu().version == (4, 2, 1)
