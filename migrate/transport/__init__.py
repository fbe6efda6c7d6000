"""Byte channels between the source and the agent (SSH exec channel or local pipes)."""

from __future__ import annotations

from typing import Protocol


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


class Tunnel(Protocol):
    """A loopback port on the agent's host whose connections reach a port on ours."""

    @property
    def remote_port(self) -> int: ...

    def close(self) -> None: ...
