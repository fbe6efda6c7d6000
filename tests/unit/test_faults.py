"""The fault seam (core/faults.py) and how the agent takes fault points from the wire."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_protocol import Pipe

from migrate.agent import server
from migrate.agent.server import Agent
from migrate.agent.streams import TREE_METHODS
from migrate.checkpoint.criu import CriuCapabilities
from migrate.core.errors import EngineUnavailable, InjectedFault
from migrate.core.faults import (
    DEFAULT_MARK,
    NO_FAULTS,
    Faults,
    agent_switch_on,
    from_wire,
)
from migrate.wire.connection import Connection
from migrate.wire.messages import METHODS
from migrate.wire.methods import Hello


def test_parse_and_env() -> None:
    f = Faults.parse(" source:a, ,agent:b ")
    assert f.points == {"source:a", "agent:b"} and f.mark == DEFAULT_MARK
    env = {"MIGRATE_FAULTS": "agent:x,source:y", "MIGRATE_FAULT_MARK": "/tmp/m"}
    g = Faults.from_env(env)
    assert g.points == {"agent:x", "source:y"} and g.mark == Path("/tmp/m")
    assert Faults.from_env({}) == NO_FAULTS
    assert g.for_side("agent") == ["agent:x"] and g.for_side("source") == ["source:y"]


def test_the_default_does_nothing(tmp_path: Path) -> None:
    NO_FAULTS.hit("source:before_pause")
    NO_FAULTS.exit("agent:exit_before_commit")
    NO_FAULTS.reach("source:before_pause", "x")
    NO_FAULTS.wait("source:wait:before_pause", "x", tmp_path / "mark")
    assert not (tmp_path / "mark").exists()
    assert list(NO_FAULTS.wrap(iter([b"a", b"b"]), "source:mid_stream", "x")) == [b"a", b"b"]


def test_hit_raises_only_for_its_point() -> None:
    f = Faults(frozenset({"source:before_pause"}))
    f.hit("source:after_pause")
    with pytest.raises(InjectedFault):
        f.hit("source:before_pause")


def test_wrap_reaches_the_point_after_the_first_chunk() -> None:
    f = Faults(frozenset({"source:mid_stream"}))
    got = []
    with pytest.raises(InjectedFault):
        for c in f.wrap(iter([b"a", b"b", b"c"]), "source:mid_stream", "x"):
            got.append(c)
    assert got == [b"a"]


def test_wait_writes_the_mark_and_holds_until_it_is_removed(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    f = Faults(frozenset({"source:wait:before_pause", "source:before_pause"}), mark)
    seen: list[str] = []

    def release() -> None:
        while not mark.exists():
            time.sleep(0.01)
        seen.append(mark.read_text())
        mark.unlink()

    t = threading.Thread(target=release)
    t.start()
    with pytest.raises(InjectedFault):  # waits first, then fails at the step itself
        f.reach("source:before_pause", "123 before_pause id\n")
    t.join(5)
    assert seen == ["123 before_pause id\n"]


def test_wire_faults_need_the_agent_switch() -> None:
    names = ["agent:restore_fail", 3, None]
    assert from_wire(names, allowed=False) == NO_FAULTS
    assert from_wire(names, allowed=True).points == {"agent:restore_fail"}
    assert from_wire([], allowed=True) == NO_FAULTS
    assert agent_switch_on({"MIGRATE_AGENT_FAULTS": "1"})
    assert not agent_switch_on({}) and not agent_switch_on({"MIGRATE_AGENT_FAULTS": "yes"})


class _NoEngine:
    def info(self) -> Any:
        raise EngineUnavailable("no engine in a unit test")


def _hello(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(server.criu, "find_criu", lambda: None)
    monkeypatch.setattr(
        server.criu, "capabilities", lambda _b: CriuCapabilities(None, None, False, "")
    )
    return agent.h_hello(
        Hello(
            protocol=server.PROTOCOL_VERSION,
            min_protocol=server.MIN_PROTOCOL_VERSION,
            software="test",
            faults=["agent:skip_name_check", "agent:exit_before_commit"],
        )
    ).to_wire()


@pytest.mark.parametrize("switch", [False, True])
def test_agent_obeys_wire_faults_only_with_its_switch(
    switch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(Connection(Pipe()), engine_factory=_NoEngine, wire_faults=switch)  # type: ignore[arg-type]
    caps = _hello(agent, monkeypatch)
    assert "engine_error" in caps
    want = {"agent:skip_name_check", "agent:exit_before_commit"} if switch else set()
    assert agent.s.faults.points == want


def test_every_method_has_one_handler() -> None:
    agent = Agent(Connection(Pipe()), engine_factory=lambda: None)  # type: ignore[arg-type,return-value]
    assert set(agent._handlers) == set(METHODS)
    # The nine tree streams share one implementation; each is a method of the protocol.
    assert len(TREE_METHODS) == 9 and set(TREE_METHODS) <= set(METHODS)
