"""The handshake (migrate/wire/session.py): one place says hello, and what an agent answers is
validated strictly before any of it is used (pure: no agent, a recorded answer)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from migrate import __version__
from migrate.core.errors import ProtocolError
from migrate.wire.client import AgentClient, CallResult
from migrate.wire.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from migrate.wire.methods import Request
from migrate.wire.session import AgentHello, open_session, parse_hello

pytestmark = pytest.mark.unit


def answer(**over: Any) -> dict[str, Any]:
    """An answer shaped as agent/server.py's h_hello builds it."""
    base: dict[str, Any] = {
        "software": "0.1.0",
        "protocol": 1,
        "hostname": "b",
        "kernel": "6.18.0",
        "methods": ["abort", "bye", "drill_restore", "hello"],
        "staging": ["disk", "memory"],
        "stream_frames": "multi",
        "criu_version": [4, 2, 1],
        "criu_ok": True,
        "engine": {
            "engine": "docker",
            "version": "20.10.24",
            "experimental": True,
            "storage_driver": "overlay2",
            "mem_total": 1 << 34,
            "live_restore": None,
        },
        "free_disk": 1 << 40,
        "mem_available": 1 << 33,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


class Recorder:
    """Stands in for an AgentClient (and its Connection, ``conn``): records the call as it
    goes on the wire, answers with a fixed dict."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.adaptive = False
        self.conn = self

    def call(self, req: Request[Any], **_: Any) -> CallResult[Any]:
        self.calls.append((type(req).method, req.model_dump(exclude_unset=True)))
        return CallResult(parse_hello(self.reply))


def test_a_complete_answer_is_typed() -> None:
    h = parse_hello(answer())
    assert isinstance(h, AgentHello)
    assert h.hostname == "b" and h.criu_version == [4, 2, 1]
    assert h.engine is not None and h.engine.storage_driver == "overlay2"
    assert h.serves("drill_restore") and not h.serves("postcopy_wait")


def test_an_agent_that_cannot_reach_its_engine_says_why() -> None:
    err = {"code": "engine.unavailable", "message": "no daemon", "hint": "start it", "details": {}}
    h = parse_hello(
        answer(engine=..., free_disk=..., mem_available=..., engine_error=err, criu_version=None)
    )
    assert h.engine is None and h.engine_error is not None
    assert h.engine_error.code == "engine.unavailable" and h.mem_available is None


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (answer(extra_field=1), "extra_field"),
        (answer(protocol="1"), "protocol"),
        (answer(protocol=True), "protocol"),
        (answer(methods=["hello", 7]), "methods.1"),
        (answer(methods="hello"), "methods"),
        (answer(hostname=...), "hostname"),
        (answer(engine={"engine": "docker"}), "engine.version"),
        (answer(engine={**answer()["engine"], "surprise": 1}), "engine.surprise"),
        (answer(criu_ok="yes"), "criu_ok"),
    ],
)
def test_a_malformed_answer_is_a_protocol_error_naming_the_field(
    bad: dict[str, Any], where: str
) -> None:
    with pytest.raises(ProtocolError, match=where.replace(".", r"\.")):
        parse_hello(bad)


def test_open_session_offers_our_range_and_the_agent_faults() -> None:
    rec = Recorder(answer())
    open_session(cast(AgentClient, rec), faults=["agent:restore_fail", "agent:a"])
    assert rec.calls == [
        (
            "hello",
            {
                "protocol": PROTOCOL_VERSION,
                "min_protocol": MIN_PROTOCOL_VERSION,
                "software": __version__,
                "faults": ["agent:a", "agent:restore_fail"],
            },
        )
    ]


@pytest.mark.parametrize(
    ("frames", "want", "adaptive"),
    [("multi", True, True), ("multi", False, False), ("", True, False)],
)
def test_adaptive_compression_only_with_an_agent_that_reads_several_frames(
    frames: str, want: bool, adaptive: bool
) -> None:
    rec = Recorder(answer(stream_frames=frames))
    open_session(cast(AgentClient, rec), adaptive=want)
    assert rec.adaptive is adaptive
