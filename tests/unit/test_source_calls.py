"""What the source's phases send the agent through the typed client, and how they read the
answers, for the calls the in-process state machine (test_state_machine.py) does not drive:
the post-copy restore and wait, the checkpoint's staging arguments, evacuate's probe and
`check --to` (recorded answers, or a real Agent over a socket pair)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_agent_client import NoInfoEngine, SockChannel
from test_protocol import Pipe

from migrate.agent.server import Agent
from migrate.checkpoint import criu
from migrate.checkpoint.criu import CriuCapabilities
from migrate.core.errors import HostUnreachable
from migrate.engines.docker.readiness import DockerReadiness
from migrate.source import dest_checks, evacuate, freeze, handover
from migrate.source.limits import POSTCOPY_TIMEOUT_S
from migrate.source.migration import Migration, RunOptions
from migrate.transport import Channel
from migrate.wire import framing, messages
from migrate.wire.client import AgentClient
from migrate.wire.connection import Connection

pytestmark = pytest.mark.unit


class TunnelPipe(Pipe):
    """A control channel that can carry the page server's link (as ssh's does)."""

    def tunnels(self) -> Callable[[int], Any]:  # type: ignore[override]
        return lambda port: SimpleNamespace(remote_port=port + 1, close=lambda: None)


def _migration(tmp_path: Path, answer: dict[str, Any], channel: type[Pipe] = Pipe) -> Migration:
    m = Migration(
        RunOptions(container="c", destination="d", state_dir=tmp_path),
        engine=object(),  # type: ignore[arg-type]
        connect=lambda: None,  # type: ignore[arg-type,return-value]
    )
    reply = framing.encode_control(messages.response_message(1, answer))
    m.conn = Connection(channel(reply))
    m.agent = AgentClient(m.conn)
    return m


def _sent(m: Migration) -> dict[str, Any]:
    """The one request the migration sent."""
    assert m.agent is not None and isinstance(m.agent.conn.ch, Pipe)
    req = framing.decode_control(bytes(m.agent.conn.ch.sent)[framing.HEADER.size :])
    return {"method": req["method"], **req["args"]}


def test_a_postcopy_restore_sends_the_tunnels_port_and_keeps_the_agents_steps(
    tmp_path: Path,
) -> None:
    steps = {"images": 0.1, "daemon": 0.2, "docker_start": 0.3, "until_running": 0.4}
    answer = {
        "container_id": "c2",
        "restore_s": 0.5,
        "running_s": 0.4,
        "restore_mode": "postcopy",
        "restore_steps": steps,
    }
    m = _migration(tmp_path, answer, TunnelPipe)
    m.page_server = SimpleNamespace(port=7000)  # type: ignore[assignment]
    m.t_pause = 0.0
    freeze._restore(m)
    assert _sent(m) == {"method": "restore", "migration_id": m.id, "page_server_port": 7001}
    assert m.tunnel is not None and m.tunnel.remote_port == 7001
    assert [k for k in m.timer.phases if k.startswith("restore.")] == [
        f"restore.{k}" for k in steps
    ]
    assert m.timer.phases["restore.daemon"] == 0.2
    assert "restore_memory_fill" not in m.timer.phases
    (restored,) = [r for r in m.journal.records() if r.event == "restored"]
    assert restored.data["restore_mode"] == "postcopy"


def test_a_plain_restore_sends_no_port_and_counts_a_local_lazy_fill(tmp_path: Path) -> None:
    answer = {
        "container_id": "c2",
        "restore_s": 3.0,
        "running_s": 1,  # an integer is a valid float
        "restore_mode": "lazy_local",
        "memory_fill_s": 2.123456,
        "lazy_bytes": 10,
    }
    m = _migration(tmp_path, answer)
    m.t_pause = 0.0
    freeze._restore(m)
    assert _sent(m) == {"method": "restore", "migration_id": m.id}
    assert m.timer.phases["restore_memory_fill"] == 2.1235
    assert not [k for k in m.timer.phases if k.startswith("restore.")]
    assert m.downtime is not None


def test_the_postcopy_wait_sends_its_limit_and_keeps_the_page_counts(tmp_path: Path) -> None:
    answer = {
        "postcopy_s": 1.5,
        "bytes": 4096,
        "pages_total": 10,
        "pages_copied": 9,
        "pages_on_demand": 2,
    }
    m = _migration(tmp_path, answer)
    m.page_server = SimpleNamespace(  # type: ignore[assignment]
        wait=lambda _s: 0, kill=lambda: None, failure_text=lambda: ""
    )
    handover.wait_postcopy(m, SimpleNamespace(name="c"))  # type: ignore[arg-type]
    assert _sent(m) == {
        "method": "postcopy_wait",
        "migration_id": m.id,
        "timeout_s": POSTCOPY_TIMEOUT_S,
    }
    # In this order; pages_copied is not reported, and a count the agent did not give is left out.
    assert list(m.postcopy.items()) == [
        ("postcopy_s", 1.5),
        ("pages_total", 10),
        ("pages_on_demand", 2),
        ("bytes", 4096),
    ]
    assert [r.event for r in m.journal.records()][-1] == "postcopy_done"


@pytest.mark.parametrize(
    ("staging", "agent_memory", "args"),
    [
        ("auto", True, {"memory_bytes": 123, "require_memory": False}),
        ("memory", True, {"memory_bytes": 123, "require_memory": True}),
        ("disk", True, {}),
        ("auto", False, {}),  # an agent that cannot stage in memory is not asked to
    ],
)
def test_the_checkpoint_asks_for_memory_staging_only_where_it_may(
    tmp_path: Path, staging: str, agent_memory: bool, args: dict[str, Any]
) -> None:
    m = Migration(
        RunOptions(container="c", destination="d", state_dir=tmp_path, staging=staging),
        engine=object(),  # type: ignore[arg-type]
        connect=lambda: None,  # type: ignore[arg-type,return-value]
    )
    m.agent_memory_staging = agent_memory
    m.memory_need = 123
    req = freeze._put_checkpoint(m)
    assert req.model_dump(exclude_unset=True) == {"migration_id": m.id, **args}


# --- a real agent ---------------------------------------------------------------------------


class LocalSockChannel(SockChannel):
    """A socket pair end with no SSH behind it: no bulk connection, no tunnels."""

    def bulk(self) -> None:
        return None

    def tunnels(self) -> None:
        return None


@pytest.fixture
def agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Channel]]:
    """Connects to a new in-process Agent (fake engine, no CRIU) each time it is called."""
    # No CRIU on either side (one module: the agent's and the source's checks read it).
    monkeypatch.setattr(criu, "find_criu", lambda: None)
    monkeypatch.setattr(
        criu, "capabilities", lambda *_a, **_k: CriuCapabilities(None, None, False, "")
    )
    threads: list[threading.Thread] = []

    def connect() -> Channel:
        ours, theirs = socket.socketpair()
        agent = Agent(
            Connection(LocalSockChannel(theirs), timeout=10),
            engine_factory=NoInfoEngine,  # type: ignore[arg-type]
            state_dir=tmp_path / f"agent{len(threads)}",
        )
        t = threading.Thread(target=agent.serve, daemon=True)
        t.start()
        threads.append(t)
        return LocalSockChannel(ours)

    yield connect
    for t in threads:
        t.join(10)


def test_evacuate_probes_each_target_with_hello_and_bye(
    agents: Callable[[], Channel],
) -> None:
    def dead() -> Channel:
        raise HostUnreachable("no route")

    def channels(target: str) -> Callable[[], Channel]:
        return agents if target == "ssh://b" else dead

    available, said = evacuate.probe_targets(["ssh://b", "ssh://c"], channels)
    assert available == {"ssh://b": 0}  # the fake engine reports no memory
    assert said["ssh://b"]["reachable"] is True and said["ssh://b"]["host"]
    assert said["ssh://c"]["reachable"] is False


def test_check_to_reads_the_agents_hello_and_says_nothing_of_bulk_locally(
    agents: Callable[[], Channel],
) -> None:
    agent = AgentClient(Connection(agents(), timeout=10))
    try:
        rep = dest_checks.check_destination(agent, DockerReadiness())
    finally:
        agent.conn.close()
    rows = {r.name: r for r in rep.results}
    assert rows["agent"].ok and "protocol" in rows["agent"].value
    assert not rows["docker"].ok  # the agent's engine is unreachable: said, not raised
    assert "bulk" not in rows and "cpu" not in rows  # local://; no CRIU here to ask with
