"""The typed agent client (migrate/wire/client.py): request models in, validated result models
out, stream statistics beside the result; against a real Agent over an in-memory socket pair."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_protocol import Pipe
from test_results import FakeEngine

from migrate.agent import server
from migrate.agent.server import Agent
from migrate.checkpoint.criu import CriuCapabilities
from migrate.core.errors import EngineUnavailable, ProtocolError, Timeout
from migrate.wire import framing, messages
from migrate.wire.client import AgentClient, StreamStats
from migrate.wire.connection import Connection
from migrate.wire.methods import Abort, Bye, Hello, LoadImage, PutLog, Status
from migrate.wire.results import AbortResult, AgentHello, LoadImageResult, StatusResult

pytestmark = pytest.mark.unit


class SockChannel:
    """One end of a socket pair, as a Channel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except TimeoutError:
            raise Timeout("nothing from the other end") from None

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def close(self) -> None:
        self.sock.close()

    def stderr_tail(self) -> str:
        return ""

    @property
    def peer(self) -> str:
        return "socketpair"


class NoInfoEngine(FakeEngine):
    def info(self) -> Any:
        raise EngineUnavailable("no engine in a unit test")


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentClient]:
    monkeypatch.setattr(server.criu, "find_criu", lambda: None)
    monkeypatch.setattr(
        server.criu, "capabilities", lambda _b: CriuCapabilities(None, None, False, "")
    )
    ours, theirs = socket.socketpair()
    engine = NoInfoEngine()
    agent = Agent(
        Connection(SockChannel(theirs), timeout=10),
        engine_factory=lambda: engine,
        state_dir=tmp_path,
    )
    t = threading.Thread(target=agent.serve, daemon=True)
    t.start()
    conn = Connection(SockChannel(ours), timeout=10)
    try:
        yield AgentClient(conn)
    finally:
        conn.close()
        t.join(10)
        theirs.close()


def test_calls_return_validated_result_models(client: AgentClient) -> None:
    hello = client.call(Hello(protocol=1, min_protocol=1, software="test", faults=[]))
    assert isinstance(hello.result, AgentHello) and hello.stream is None
    assert hello.result.serves("drill_restore") and hello.result.engine is None
    assert hello.result.engine_error is not None
    assert hello.result.engine_error.code == EngineUnavailable.code
    status = client.call(Status(migration_id="m1")).result
    assert status == StatusResult(last="", live=False)
    assert client.call(Abort(migration_id="m1")).result == AbortResult(aborted=True, known=False)
    client.call(Bye())


def test_a_stream_call_returns_its_statistics_beside_the_result(client: AgentClient) -> None:
    data = [b"image " * 10_000, b"layers"]
    out = client.call(LoadImage(image_id="sha256:img"), stream=iter(data))
    assert out.result == LoadImageResult(loaded=True)
    assert isinstance(out.stream, StreamStats)
    assert out.stream.raw == sum(len(d) for d in data) and 0 < out.stream.wire < out.stream.raw
    assert "_stream" not in out.result.to_wire()


def test_the_agents_error_is_raised_as_its_class(client: AgentClient) -> None:
    with pytest.raises(ProtocolError, match="unknown migration 'm9'"):
        client.call(PutLog(migration_id="m9"), stream=iter([b"log"]))
    # The session goes on after a refused stream.
    assert client.call(Status(migration_id="m9")).result.live is False


def _answering(result: dict[str, Any]) -> AgentClient:
    reply = framing.encode_control(messages.response_message(1, result))
    return AgentClient(Connection(Pipe(reply)))


def test_only_the_arguments_given_are_sent() -> None:
    client = _answering({"last": "prepare", "live": True})
    assert client.call(Status(migration_id="m")).result.last == "prepare"
    ch = client.conn.ch
    assert isinstance(ch, Pipe)
    sent = framing.decode_control(bytes(ch.sent)[framing.HEADER.size :])
    assert sent["method"] == "status" and sent["args"] == {"migration_id": "m"}


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        ({"last": "x"}, "live"),
        ({"last": "x", "live": "no"}, "live"),
        ({"last": "x", "live": False, "more": 1}, "more"),
    ],
)
def test_a_malformed_answer_names_method_and_field(answer: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError, match=f"status: the agent's answer is malformed.*{field}"):
        _answering(answer).call(Status(migration_id="m"))
