"""The real agent in a thread of the test process, on one end of a socketpair.

``Destination.connect`` is what a Migration (or recover) gets as its channel factory: each
call starts a fresh Agent, as `migrate run` starts a fresh `migrate agent` over SSH for every
session (a rollback's second session included). When an agent's serve() returns, its end of
the socket is closed, as the agent process's exit would close its stdout. ``cut`` breaks the
link the way a dead network does: both ends see the connection end.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from migrate.agent.server import IDLE_TIMEOUT_S, Agent
from migrate.core.errors import ConnectionLost, Timeout
from migrate.engines.base import Engine
from migrate.wire.connection import Connection

# A test that waits longer than this for an agent to end has found a hang.
JOIN_TIMEOUT_S = 20.0


class SocketChannel:
    """A migrate.transport.Channel over one end of a socketpair.

    ``cut_when``: a test hook; a write it matches is not sent, the link is cut instead (the
    bytes are lost with the network)."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self._peer = peer
        self.cut_when: Callable[[bytes], bool] | None = None

    def recv(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except TimeoutError:
            raise Timeout(f"no data from {self._peer}") from None
        except OSError as e:
            raise ConnectionLost(f"reading from {self._peer}: {e}") from None

    def sendall(self, data: bytes) -> None:
        if self.cut_when is not None and self.cut_when(data):
            self.cut()
            raise ConnectionLost(f"the link to {self._peer} was cut")
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise Timeout(f"{self._peer} accepted no data") from None
        except OSError as e:
            raise ConnectionLost(f"writing to {self._peer}: {e}") from None

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def cut(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already

    def close(self) -> None:
        self.cut()
        self.sock.close()

    def stderr_tail(self) -> str:
        return ""

    @property
    def peer(self) -> str:
        return self._peer

    def tunnels(self) -> None:
        return None

    def bulk(self) -> None:
        return None


@dataclass
class Session:
    """One agent session: the source's end of its link and the thread serving it."""

    source_end: SocketChannel
    agent_end: SocketChannel
    thread: threading.Thread | None = None
    exit_code: int | None = None


@dataclass
class Destination:
    """The destination host: its engine, and an agent per connection."""

    engine: Engine
    state_dir: Path
    staging_root: Path
    sessions: list[Session] = field(default_factory=list)
    # Exceptions that escaped an agent's serve(): a bug the test must report.
    crashes: list[BaseException] = field(default_factory=list)
    # Whether new connections succeed (False: the destination is unreachable).
    reachable: bool = True
    # The ``cut_when`` of each new session's agent end: the agent's answer it matches is
    # lost with the link.
    agent_cut_when: Callable[[bytes], bool] | None = None

    def connect(self) -> SocketChannel:
        if not self.reachable:
            raise ConnectionLost("the destination is unreachable (test)")
        ours, theirs = socket.socketpair()
        source_end, agent_end = SocketChannel(ours, "agent"), SocketChannel(theirs, "source")
        agent_end.cut_when = self.agent_cut_when
        agent = Agent(
            Connection(agent_end, timeout=IDLE_TIMEOUT_S),
            engine_factory=lambda: self.engine,
            state_dir=self.state_dir,
            staging_root=self.staging_root,
            wire_faults=True,
        )
        session = Session(source_end, agent_end)
        session.thread = threading.Thread(
            target=self._serve, args=(agent, session), name="test-agent", daemon=True
        )
        self.sessions.append(session)
        session.thread.start()
        return source_end

    def _serve(self, agent: Agent, session: Session) -> None:
        try:
            session.exit_code = agent.serve()
        except BaseException as e:  # noqa: BLE001 - reported by the test, not swallowed
            self.crashes.append(e)
        finally:
            session.agent_end.close()

    def cut(self) -> None:
        """Break the link of the latest session."""
        self.sessions[-1].source_end.cut()

    def join(self) -> None:
        """Wait for every agent to end; fail on one that hangs or crashed."""
        for s in self.sessions:
            assert s.thread is not None
            s.thread.join(JOIN_TIMEOUT_S)
            assert not s.thread.is_alive(), "an agent did not end"
        assert not self.crashes, f"an agent crashed: {self.crashes!r}"
