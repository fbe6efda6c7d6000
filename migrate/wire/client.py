"""The typed agent client: a request model in, its validated result model out.

``AgentClient(conn).call(Restore(migration_id=...))`` sends the arguments the request was
built with (an optional one left unset is not sent, so the agent applies its default, as
before), waits for the answer, and validates it against the request's result model
(wire/results.py). A stream's byte counts come back beside the result, never inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, cast

import pydantic

from migrate.core.errors import ProtocolError
from migrate.wire.connection import Connection
from migrate.wire.methods import R, Request
from migrate.wire.results import invalid_fields


@dataclass(frozen=True)
class StreamStats:
    """What a stream cost: bytes before compression, bytes on the wire (frames included),
    and how many raw bytes went at the fast compression level (adaptive streams)."""

    raw: int
    wire: int
    fast_raw: int = 0


@dataclass(frozen=True)
class CallResult(Generic[R]):
    """An agent's validated answer, and the statistics of the stream the request carried."""

    result: R
    stream: StreamStats | None = None


class AgentClient:
    """Calls the agent at the other end of ``conn`` with typed requests."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def call(
        self,
        req: Request[R],
        *,
        stream: Iterator[bytes] | None = None,
        timeout: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> CallResult[R]:
        """Send ``req`` (with ``stream`` when its method takes one) and return the answer as
        the method's result model; the agent's error is raised as the same class, and an
        answer that does not match the model is a ProtocolError naming method and field."""
        method = type(req).method
        answer, stats = self.conn.exchange(
            method,
            req.model_dump(exclude_unset=True),
            stream=stream,
            timeout=timeout,
            on_progress=on_progress,
        )
        return CallResult(parse_result(req, answer), _stream_stats(stats))


def parse_result(req: Request[R], answer: dict[str, Any]) -> R:
    """Validate ``answer`` as the result of ``req``'s method."""
    model = type(req).result
    try:
        result = model.model_validate(answer)
    except pydantic.ValidationError as e:
        raise ProtocolError(
            f"{type(req).method}: the agent's answer is malformed ({invalid_fields(e)})",
            hint="install the same migrate version on both hosts",
        ) from None
    # The model is the request's own parameter (Request.__pydantic_init_subclass__).
    return cast(R, result)


def _stream_stats(stats: dict[str, int] | None) -> StreamStats | None:
    if stats is None:
        return None
    return StreamStats(stats["raw"], stats["wire"], stats.get("fast_raw", 0))
