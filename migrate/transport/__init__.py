"""Byte channels between the source and the agent (SSH exec channel or local pipes), and the
types every transport shares: what a channel can do besides carrying bytes is asked through
its capability accessors (``tunnels``, ``bulk``), never guessed from its attributes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class BulkTarget:
    """Where and as whom the control connection logged in, and the key it verified."""

    host: str
    port: int
    user: str
    identity: Path | None  # None: OpenSSH's defaults (ssh-agent, ~/.ssh/id_*)
    host_key_type: str  # e.g. ssh-ed25519, as paramiko names it
    host_key_b64: str
    agent_command: str  # the remote command that started the agent (env prefix included)


class Tunnel(Protocol):
    """A loopback port on the agent's host whose connections reach a port on ours."""

    @property
    def remote_port(self) -> int: ...

    def hold(self) -> None:
        """Test hook (MIGRATE_FAULTS source:wait:postcopy): stop passing data on, so a test
        can break the link while post-copy is certainly unfinished. A tunnel that carries
        nothing itself (same host) has nothing to hold."""
        ...

    def close(self) -> None: ...


# Opens a Tunnel to our loopback port (the argument) from the agent's host.
TunnelFactory = Callable[[int], Tunnel]
# Computes the BulkTarget when called (it checks that the connection is still up).
BulkTargetFactory = Callable[[], BulkTarget]


class Channel(Protocol):
    """A bidirectional byte pipe to a running agent.

    ``recv`` returns at most ``n`` bytes, ``b""`` at end of stream, and raises
    :class:`migrate.core.errors.Timeout` when nothing arrived within the timeout set by
    ``settimeout`` (``None`` waits forever: never used by the tool itself).
    ``sendall`` writes everything or raises :class:`migrate.core.errors.ConnectionLost`.
    """

    def recv(self, n: int) -> bytes: ...

    def sendall(self, data: bytes) -> None: ...

    def settimeout(self, seconds: float | None) -> None: ...

    def close(self) -> None: ...

    def stderr_tail(self) -> str:
        """Last lines the agent wrote to its stderr (for error messages)."""
        ...

    @property
    def peer(self) -> str:
        """Human-readable name of the other end (``ssh://root@10.0.0.2:22``, ``local``)."""
        ...

    # --- capabilities: None where this channel cannot -------------------------------------

    def tunnels(self) -> TunnelFactory | None:
        """How to open a tunnel from the agent's host back to one of our loopback ports
        (post-copy's page-server link)."""
        ...

    def bulk(self) -> BulkTargetFactory | None:
        """Where a second, OpenSSH connection to the agent's host must go (the bulk
        connection, transport/openssh.py): only channels over SSH have one."""
        ...
